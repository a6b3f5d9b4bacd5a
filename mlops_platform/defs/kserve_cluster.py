"""Serving in a Kubernetes cluster: InferenceServices running the platform's own KServe runtime image.

The same `ModelServing` calls as the local server, mapped onto KServe 0.21:
  * Standard (RawDeployment) mode: the stable revision is `spec.predictor`, the canary is `spec.canary[0]` with its
    `trafficPercent` (routing needs the Gateway API). Promotion and rollback patch both.
  * Serverless mode: Knative revisions; the candidate becomes `spec.predictor` with `canaryTrafficPercent`, the
    previous rolled-out revision keeps the rest. Rollback is `canaryTrafficPercent: 0`, promotion `100`.
Revisions are judged from Prometheus, which scrapes the same request metrics the local server exposes.
"""

from __future__ import annotations

from typing import Any

import requests

from mlops_platform.core.canary import COMPUTE_METRIC, LATENCY_METRIC, REQUESTS_METRIC, Snapshot
from mlops_platform.defs.resources import Endpoint, ModelServing

RUNTIME_PORT = 8080
STANDARD, SERVERLESS = "Standard", "Serverless"


def predictor_spec(name: str, version: str, revision: str, *, image: str, tracking_uri: str,
                   service_account: str | None, canary_traffic_percent: int | None = None) -> Any:
    """Our runtime as a custom predictor container, pinned to one registered version and labelled with its revision."""
    from kserve import V1beta1PredictorSpec
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ResourceRequirements

    container = V1Container(
        name="kserve-container",
        image=image,
        args=["--host", "0.0.0.0", "--port", str(RUNTIME_PORT), "--tracking-uri", tracking_uri,
              "--model", f"{name}={version}", "--revision", revision],
        env=[V1EnvVar(name="MLOPS_MODEL_VERSION", value=version)],
        ports=[V1ContainerPort(container_port=RUNTIME_PORT, protocol="TCP")],
        resources=V1ResourceRequirements(requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}),
    )
    return V1beta1PredictorSpec(containers=[container], service_account_name=service_account, min_replicas=1,
                                canary_traffic_percent=canary_traffic_percent)


def inference_service(name: str, stable: str, canary: str | None, canary_percent: int, *, namespace: str, image: str,
                      tracking_uri: str, service_account: str | None = None, mode: str = STANDARD,
                      serverless_percent: int | None = None) -> Any:
    """The whole InferenceService for one endpoint and its routing."""
    from kserve import V1beta1CanarySpec, V1beta1InferenceService, V1beta1InferenceServiceSpec, constants
    from kubernetes.client import V1ObjectMeta

    common = {"image": image, "tracking_uri": tracking_uri, "service_account": service_account}
    if mode == STANDARD:
        spec = V1beta1InferenceServiceSpec(
            predictor=predictor_spec(name, stable, "stable", **common),
            # An empty list, not None: a merge patch must be able to remove a canary that is there.
            canary=[V1beta1CanarySpec(predictor=predictor_spec(name, canary, "canary", **common),
                                      traffic_percent=canary_percent)] if canary else [],
        )
    else:
        candidate = canary or stable
        spec = V1beta1InferenceServiceSpec(predictor=predictor_spec(
            name, candidate, "canary" if canary else "stable", canary_traffic_percent=serverless_percent, **common))
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=name, namespace=namespace,
            annotations={"serving.kserve.io/deploymentMode": mode},
            labels={"app.kubernetes.io/part-of": "mlops-platform", "mlops.platform/model": name},
        ),
        spec=spec,
    )


class KServeClusterServing(ModelServing):
    """Creates and patches one InferenceService per model; reads revision metrics from Prometheus."""

    namespace: str
    image: str
    tracking_uri: str
    service_account: str | None = None
    deployment_mode: str = STANDARD
    prometheus_url: str = "http://kube-prometheus-stack-prometheus.monitoring:9090"
    base_url: str | None = None
    kubeconfig: str | None = None  # default: the pod's service account in a cluster, ~/.kube/config outside
    ready_timeout_s: int = 600
    ready_poll_s: float = 5.0

    def client(self) -> Any:
        from kserve import KServeClient

        return KServeClient(config_file=self.kubeconfig)

    def _current(self, client: Any, name: str) -> dict | None:
        from kubernetes.client.rest import ApiException

        try:
            return client.get(name, namespace=self.namespace)
        except (ApiException, RuntimeError) as exc:
            if "404" in str(exc) or "Not Found" in str(exc):
                return None
            raise

    def _apply(self, name: str, stable: str, canary: str | None, canary_percent: int, serverless_percent: int | None) -> dict:
        client = self.client()
        isvc = inference_service(name, stable, canary, canary_percent, namespace=self.namespace, image=self.image,
                                 tracking_uri=self.tracking_uri, service_account=self.service_account,
                                 mode=self.deployment_mode, serverless_percent=serverless_percent)
        if self._current(client, name) is None:
            client.create(isvc, namespace=self.namespace)
        else:
            client.patch(name, isvc, namespace=self.namespace)
        client.wait_isvc_ready(name, namespace=self.namespace, timeout_seconds=self.ready_timeout_s,
                              polling_interval=self.ready_poll_s)
        return client.get(name, namespace=self.namespace)

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0) -> None:
        if self.deployment_mode == STANDARD:
            self._apply(name, stable, canary, canary_percent, None)
        elif canary is not None:
            self._apply(name, stable, canary, canary_percent, canary_percent)
        else:
            # Knative keeps the previous rolled-out revision: 0% to the candidate is the documented rollback.
            current = self._current(self.client(), name)
            container = ((current or {}).get("spec", {}).get("predictor", {}).get("containers") or [{}])[0]
            candidate = next((a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"{name}=")), None)
            self._apply(name, stable, None if candidate in (None, stable) else candidate, 0,
                        None if candidate in (None, stable) else 0)

    def deploy(self, name: str, version: str) -> Endpoint:
        if self.deployment_mode == SERVERLESS:
            current = self._current(self.client(), name)
            if current is not None and current["spec"]["predictor"].get("canaryTrafficPercent") is not None:
                status = self._apply(name, version, version, 100, 100)  # promotion: the candidate takes 100%
                return self._endpoint(name, version, status)
        status = self._apply(name, version, None, 0, None)
        return self._endpoint(name, version, status)

    def _endpoint(self, name: str, version: str, status: dict) -> Endpoint:
        url = self.base_url or status.get("status", {}).get("url", "")
        return Endpoint(name=name, version=version, base_url=url.rstrip("/"))

    def _query(self, promql: str) -> list[dict]:
        response = requests.get(f"{self.prometheus_url.rstrip('/')}/api/v1/query", params={"query": promql}, timeout=10)
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
            key = (labels.get("revision", "stable"), labels.get("code", ""))
            snap.requests[key] = snap.requests.get(key, 0.0) + value
            if labels.get("version"):
                snap.versions[key[0]] = labels["version"]
        for metric, target in ((LATENCY_METRIC, snap.buckets), (COMPUTE_METRIC, snap.compute)):
            for row in self._query(f"sum by (revision, le) ({metric}_bucket{{{selector}}})"):
                le = row["metric"]["le"]
                bound = float("inf") if le in ("+Inf", "Inf") else float(le)
                target.setdefault(row["metric"].get("revision", "stable"), {})[bound] = float(row["value"][1])
        return snap
