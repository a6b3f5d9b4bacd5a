"""Metrics sources: the request counters and latency histograms canary analysis judges revisions by.

Locally they are read from the model server's own `/metrics`; in a cluster from Prometheus's HTTP API, summed over
the endpoint's pods. Both give the same `core.canary.Snapshot`, so the decision is the same code in both places.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod

import requests

from mlops_platform.core.canary import COMPUTE_METRIC, LATENCY_METRIC, REQUESTS_METRIC, Revision, Snapshot


class MetricsSource(ABC):
    """Cumulative request counts and latency buckets per revision of one endpoint."""

    @abstractmethod
    def snapshot(self, name: str) -> Snapshot: ...


def _bound(le: str) -> float:
    return math.inf if le in ("+Inf", "Inf", "inf") else float(le)


def parse_prometheus(text: str, model: str) -> Snapshot:
    """The platform's request metrics for one endpoint, from Prometheus text exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    snap = Snapshot()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("model") != model:
                continue
            if sample.name == REQUESTS_METRIC:
                key = (labels["revision"], labels["code"], labels.get("version", ""))
                snap.requests[key] = snap.requests.get(key, 0.0) + sample.value
                if labels.get("version"):
                    snap.versions[labels["revision"]] = labels["version"]
            elif sample.name in (f"{LATENCY_METRIC}_bucket", f"{COMPUTE_METRIC}_bucket"):
                target = snap.buckets if sample.name.startswith(LATENCY_METRIC) else snap.compute
                target.setdefault(labels["revision"], {})[_bound(labels["le"])] = sample.value
    return snap


class ServerMetrics(MetricsSource):
    """The model server's own Prometheus exposition at `BASE_URL/metrics`."""

    def __init__(self, base_url: str, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s

    def snapshot(self, name: str) -> Snapshot:
        response = requests.get(f"{self.base_url}/metrics", timeout=self.timeout_s)
        response.raise_for_status()
        return parse_prometheus(response.text, name)


class PrometheusMetrics(MetricsSource):
    """Prometheus's instant-query API, scoped to one namespace's pods."""

    def __init__(self, url: str, namespace: str, timeout_s: float = 10.0):
        self.url = url.rstrip("/")
        self.namespace = namespace
        self.timeout_s = timeout_s

    def _query(self, promql: str) -> list[dict]:
        response = requests.get(f"{self.url}/api/v1/query", params={"query": promql}, timeout=self.timeout_s)
        response.raise_for_status()
        body = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: {body}")
        return body["data"]["result"]

    def snapshot(self, name: str) -> Snapshot:
        """The same cumulative counters as the local `/metrics`, summed over the endpoint's pods by Prometheus."""
        selector = f'model="{name}",namespace="{self.namespace}"'
        snap = Snapshot()
        for row in self._query(f"sum by (revision, version, code) ({REQUESTS_METRIC}{{{selector}}})"):
            labels, value = row["metric"], float(row["value"][1])
            key = (labels.get("revision", Revision.STABLE), labels.get("code", ""), labels.get("version", ""))
            snap.requests[key] = snap.requests.get(key, 0.0) + value
            if labels.get("version"):
                snap.versions[key[0]] = labels["version"]
        for metric, target in ((LATENCY_METRIC, snap.buckets), (COMPUTE_METRIC, snap.compute)):
            for row in self._query(f"sum by (revision, le) ({metric}_bucket{{{selector}}})"):
                revision = row["metric"].get("revision", Revision.STABLE)
                target.setdefault(revision, {})[_bound(row["metric"]["le"])] = float(row["value"][1])
        return snap
