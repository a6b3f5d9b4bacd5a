"""Grafana dashboards as code (grafana-foundation-sdk), provisioned as ConfigMaps that kube-prometheus-stack's
Grafana sidecar loads (label `grafana_dashboard: "1"`): serving per revision, canary decisions, drift and GPUs.

Every query is checked by promtool in tests/infra/test_dashboards.py, and every metric it reads is one the platform
exports (mlops_platform/serving/metrics.py), a recording rule of deploy/monitoring/rules.yaml, or DCGM's."""

from __future__ import annotations

import json

from grafana_foundation_sdk.builders.dashboard import Dashboard, DatasourceVariable, QueryVariable, Row
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.builders.timeseries import Panel as Timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef

NAMESPACE = "monitoring"
SIDECAR_LABEL = {"grafana_dashboard": "1"}
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
MODEL = 'model=~"$model"'
ERRORS = MODEL + ', code=~"5.."'
CANARY = MODEL + ', revision="canary"'


def _panel(title: str, unit: str, *queries: tuple[str, str]) -> Timeseries:
    panel = Timeseries().title(title).unit(unit).datasource(DATASOURCE).height(8).span(12)
    for expr, legend in queries:
        panel = panel.with_target(Dataquery().expr(expr).legend_format(legend))
    return panel


def _dashboard(uid: str, title: str, model_variable: bool = True) -> Dashboard:
    dashboard = (Dashboard(title).uid(uid).tags(["mlops-platform"]).refresh("30s").time("now-6h", "now")
                 .with_variable(DatasourceVariable("datasource").type("prometheus")))
    if model_variable:
        dashboard = dashboard.with_variable(
            QueryVariable("model").datasource(DATASOURCE).query("label_values(mlops_inference_requests_total, model)")
            .multi(True).include_all(True))
    return dashboard


def _rate(selector: str) -> str:
    return f"rate(mlops_inference_requests_total{{{selector}}}[5m])"


def _p95(metric: str, by: str) -> str:
    return f"histogram_quantile(0.95, sum by ({by}, le) (rate({metric}_bucket{{{MODEL}}}[5m])))"


def serving() -> Dashboard:
    return (_dashboard("mlops-serving", "MLOps: serving per revision")
            .with_row(Row("Traffic"))
            .with_panel(_panel("Requests by revision and version", "reqps",
                               (f"sum by (model, revision, version) ({_rate(MODEL)})", "{{model}} {{revision}} v{{version}}")))
            .with_panel(_panel("Error ratio (5xx) by revision", "percentunit",
                               (f"sum by (model, revision) ({_rate(ERRORS)}) / "
                                f"sum by (model, revision) ({_rate(MODEL)})", "{{model}} {{revision}}")))
            .with_row(Row("Latency"))
            .with_panel(_panel("p95 end-to-end latency by revision", "s",
                               (_p95("mlops_inference_request_duration_seconds", "model, revision"),
                                "{{model}} {{revision}}")))
            .with_panel(_panel("p95 model compute by revision", "s",
                               (_p95("mlops_inference_compute_seconds", "model, revision"), "{{model}} {{revision}}"))))


def canary() -> Dashboard:
    share = f"sum by (model) ({_rate(CANARY)}) / sum by (model) ({_rate(MODEL)})"
    return (_dashboard("mlops-canary", "MLOps: canary decisions")
            .with_panel(_panel("Canary share of traffic", "percentunit", (share, "{{model}}")))
            .with_panel(_panel("Error ratio: canary against stable", "percentunit",
                               (f"sum by (model, revision) ({_rate(ERRORS)}) / "
                                f"sum by (model, revision) ({_rate(MODEL)})", "{{model}} {{revision}}")))
            .with_panel(_panel("p95 latency: canary against stable", "s",
                               (_p95("mlops_inference_request_duration_seconds", "model, revision"),
                                "{{model}} {{revision}}")))
            .with_panel(_panel("Canary and SLO alerts firing", "short",
                               ('sum by (alertname, model) (ALERTS{alertstate="firing", '
                                'alertname=~"Canary.*|Model.*SLOBreached"})', "{{alertname}} {{model}}"))))


def drift() -> Dashboard:
    return (_dashboard("mlops-drift", "MLOps: drift and live quality")
            .with_panel(_panel("Population stability index by feature", "short",
                               (f"max by (model, feature) (mlops_feature_drift{{{MODEL}}})", "{{model}} {{feature}}")))
            .with_panel(_panel("Live quality of the champion", "short",
                               (f"max by (model, metric, version) (mlops_live_quality{{{MODEL}}})",
                                "{{model}} {{metric}} v{{version}}"))))


def gpu() -> Dashboard:
    by = "Hostname, gpu"
    return (_dashboard("mlops-gpu", "MLOps: GPUs (DCGM)", model_variable=False)
            .with_panel(_panel("GPU utilization", "percent", (f"avg by ({by}) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} {{gpu}}")))
            .with_panel(_panel("GPU memory in use", "percentunit",
                               (f"max by ({by}) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE))",
                                "{{Hostname}} {{gpu}}")))
            .with_panel(_panel("GPU temperature", "celsius", (f"max by ({by}) (DCGM_FI_DEV_GPU_TEMP)", "{{Hostname}} {{gpu}}")))
            .with_panel(_panel("XID errors", "short", (f"max by ({by}) (DCGM_FI_DEV_XID_ERRORS)", "{{Hostname}} {{gpu}}"))))


DASHBOARDS = (serving, canary, drift, gpu)


def dashboard_json(build) -> dict:
    return json.loads(json.dumps(build().build(), cls=JSONEncoder))


def dashboard_config_maps() -> list[dict]:
    """One ConfigMap per dashboard, for the Grafana sidecar."""
    maps = []
    for build in DASHBOARDS:
        model = dashboard_json(build)
        maps.append({"apiVersion": "v1", "kind": "ConfigMap",
                     "metadata": {"name": model["uid"], "namespace": NAMESPACE, "labels": dict(SIDECAR_LABEL)},
                     "data": {f"{model['uid']}.json": json.dumps(model, sort_keys=True)}})
    return maps
