"""The Grafana dashboards (mlops_infra/dashboards.py): every query is valid PromQL (promtool parses it as a
recording rule), reads only metrics that exist, and the ConfigMaps are what kube-prometheus-stack's sidecar loads."""

from __future__ import annotations

import re
import subprocess

import kubernetes_validate
import yaml

from mlops_infra.dashboards import DASHBOARDS, dashboard_config_maps, dashboard_json
from tests import upstream
from tests.infra.conftest import releases, values
from tests.infra.test_upstream_contracts import promtool
from tests.support import REPO

# DCGM exporter fields the GPU dashboard reads (dcgm-exporter's default counters).
DCGM = {"DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE", "DCGM_FI_DEV_GPU_TEMP",
        "DCGM_FI_DEV_XID_ERRORS"}


def queries() -> list[tuple[str, str]]:
    out = []
    for build in DASHBOARDS:
        model = dashboard_json(build)
        for panel in model["panels"]:
            for target in panel.get("targets", []):
                out.append((model["uid"], target["expr"]))
    return out


def exported_metrics() -> set[str]:
    from mlops_platform.serving import metrics

    names = set()
    for collector in (metrics.REQUESTS, metrics.LATENCY, metrics.COMPUTE, metrics.FEATURE_DRIFT, metrics.LIVE_QUALITY):
        for family in collector.collect():
            names |= {family.name, f"{family.name}_total", f"{family.name}_bucket"}
    return names


def test_every_query_is_valid_promql(tmp_path):
    rules = {"groups": [{"name": "dashboards", "rules": [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$model", ".*")} for i, (_, expr) in enumerate(queries())]}]}
    (tmp_path / "queries.yaml").write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool(), "check", "rules", "queries.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_every_query_reads_metrics_that_exist():
    known = exported_metrics() | DCGM | {"ALERTS"}
    for uid, expr in queries():
        names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{", expr)) | set(re.findall(r"\b(DCGM_\w+)", expr))
        assert names <= known, (uid, names - known)
    assert {uid for uid, _ in queries()} == {"mlops-serving", "mlops-canary", "mlops-drift", "mlops-gpu"}


def test_the_config_maps_are_loaded_by_the_grafana_sidecar(synthesized):
    [defaults] = upstream.read("kube-prometheus-stack-88.5.3-values.yaml.gz")
    sidecar = defaults["grafana"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] and sidecar["searchNamespace"] == "ALL"
    for config_map in dashboard_config_maps():
        kubernetes_validate.validate(config_map, "1.33", strict=True)
        assert config_map["metadata"]["labels"] == {sidecar["label"]: sidecar["labelValue"]}
    for doc in synthesized.values():
        applied = values(releases(doc)["platform-monitoring"])["resources"]
        assert {m["metadata"]["name"] for m in applied if m["kind"] == "ConfigMap"} == {
            m["metadata"]["name"] for m in dashboard_config_maps()}
    rules = yaml.safe_load((REPO / "deploy" / "monitoring" / "rules.yaml").read_text())
    assert rules["kind"] == "PrometheusRule"
