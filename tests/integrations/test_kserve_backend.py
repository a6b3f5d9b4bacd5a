"""The cluster serving backend: InferenceServices and patches for canary, promotion and rollback, validated against
KServe's own CRD (v0.20.0, strict field validation) and its webhook's canary rules, sent through KServeClient to a
Kubernetes API stand-in on loopback; revision metrics read from a Prometheus query API stand-in."""

from __future__ import annotations

import math

import jsonschema
import kubernetes_validate
import pytest

from mlops_platform.core.canary import Outcome
from mlops_platform.integrations.serving.kserve import DeploymentMode, KServeServing
from tests import upstream
from tests.integrations.fake_servers import FakeKubernetes, FakePrometheus
from tests.support import REPO
from tests.upstream.kserve_webhook import canary_errors

STANDARD, SERVERLESS = DeploymentMode.STANDARD, DeploymentMode.SERVERLESS

SCHEMA = upstream.crd_validator("kserve-v0.20.0-serving.kserve.io_inferenceservices.yaml.gz", "v1beta1", "InferenceService")
NAME, NS = "breast-cancer", "models"


def validate(isvc: dict) -> None:
    """KServe's CRD (schema and CEL rules) and webhook for the InferenceService, the Kubernetes schema for each
    predictor container."""
    upstream.validate_custom_resource({k: v for k, v in isvc.items() if k != "status"})
    assert canary_errors(isvc) is None, canary_errors(isvc)
    predictors = [isvc["spec"]["predictor"], *[c["predictor"] for c in isvc["spec"].get("canary", [])]]
    for predictor in predictors:
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {"containers": predictor["containers"]}}
        kubernetes_validate.validate(pod, "1.33", strict=True)


def version_of(predictor: dict) -> str:
    args = predictor["containers"][0]["args"]
    return args[args.index("--model") + 1].split("=", 1)[1]


def revision_of(predictor: dict) -> str:
    args = predictor["containers"][0]["args"]
    return args[args.index("--revision") + 1]


def artifact_uri(version: str) -> str:
    return f"s3://models-bucket/mlflow/{version}/artifacts"


@pytest.fixture
def cluster(tmp_path):
    """The Kubernetes API stand-in, and a real MLflow registry on SQLite with versions 1 to 6 of the endpoint's model,
    whose artifact locations the InferenceServices name."""
    from mlops_platform.integrations.registry import MlflowRegistry

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowRegistry(tracking).client()
    client.create_registered_model(NAME)
    for version in range(1, 7):
        client.create_model_version(NAME, source=artifact_uri(str(version)))
    with FakeKubernetes() as api:
        def serving(mode: DeploymentMode, prometheus: str = "http://prometheus.invalid",
                    tracking_uri: str = tracking, pod_labels: dict | None = None) -> KServeServing:
            return KServeServing(NS, "registry.example.com/mlops-runtime:1.0", tracking_uri,
                                 service_account="kserve-models", deployment_mode=mode,
                                 kubeconfig=api.kubeconfig(tmp_path / "kubeconfig.json"), ready_poll_s=0.05,
                                 prometheus_url=prometheus, pod_labels=pod_labels)
        yield api, serving


def stored(api: FakeKubernetes) -> dict:
    return api.objects[(NS, NAME)]


def test_standard_mode_canary_promotion_and_rollback(cluster):
    api, make = cluster
    serving = make(STANDARD)

    endpoint = serving.deploy(NAME, "3")
    assert endpoint.base_url == f"http://{NAME}.{NS}.example.com" and endpoint.version == "3"
    assert api.requests[1]["method"] == "POST"
    validate(stored(api))
    assert stored(api)["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Standard"
    assert version_of(stored(api)["spec"]["predictor"]) == "3" and stored(api)["spec"]["canary"] == []

    serving.set_routing(NAME, "3", "4", 10)
    patch = [r for r in api.requests if r["method"] == "PATCH"][-1]
    assert patch["content_type"] == "application/merge-patch+json"
    validate(stored(api))
    [canary_spec] = stored(api)["spec"]["canary"]
    assert canary_spec["trafficPercent"] == 10 and version_of(canary_spec["predictor"]) == "4"
    assert revision_of(canary_spec["predictor"]) == "canary" and revision_of(stored(api)["spec"]["predictor"]) == "stable"

    serving.set_routing(NAME, "3")  # rollback
    validate(stored(api))
    assert stored(api)["spec"]["canary"] == [] and version_of(stored(api)["spec"]["predictor"]) == "3"

    serving.set_routing(NAME, "3", "5", 10)
    serving.deploy(NAME, "5")  # promotion
    validate(stored(api))
    assert stored(api)["spec"]["canary"] == [] and version_of(stored(api)["spec"]["predictor"]) == "5"
    assert stored(api)["metadata"]["generation"] == 5


def test_serverless_mode_uses_canary_traffic_percent(cluster):
    api, make = cluster
    serving = make(SERVERLESS)
    serving.deploy(NAME, "3")
    assert "canaryTrafficPercent" not in stored(api)["spec"]["predictor"]

    serving.set_routing(NAME, "3", "4", 10)
    validate(stored(api))
    predictor = stored(api)["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 10 and version_of(predictor) == "4"
    assert "canary" not in stored(api)["spec"]

    serving.set_routing(NAME, "3")  # rollback: Knative sends everything to the previous rolled-out revision
    validate(stored(api))
    assert stored(api)["spec"]["predictor"]["canaryTrafficPercent"] == 0

    serving.set_routing(NAME, "3", "6", 10)
    serving.deploy(NAME, "6")  # promotion: the candidate takes all traffic
    validate(stored(api))
    assert stored(api)["spec"]["predictor"]["canaryTrafficPercent"] == 100 and version_of(stored(api)["spec"]["predictor"]) == "6"


def test_the_predictors_name_their_artifacts_for_the_storage_initializer(cluster):
    api, make = cluster
    serving = make(STANDARD)
    serving.set_routing(NAME, "3", "4", 10, force=True)
    predictors = [stored(api)["spec"]["predictor"], stored(api)["spec"]["canary"][0]["predictor"]]
    for predictor, version in zip(predictors, ("3", "4"), strict=True):
        env = {e["name"]: e["value"] for e in predictor["containers"][0]["env"]}
        assert env["STORAGE_URI"] == artifact_uri(version)
    assert stored(api)["spec"]["canary"][0]["predictor"]["name"] == "canary"


@pytest.mark.parametrize("mode", [STANDARD, SERVERLESS])
def test_the_azure_profile_opts_every_predictor_pod_into_workload_identity(cluster, tmp_path, monkeypatch, mode):
    """Azure's webhook gives a pod its service account's identity only when the pod carries the label; KServe copies
    a predictor's `labels` to its pods. The Azure profile sets them, on the stable and the canary predictor alike,
    and the InferenceService still passes the upstream CRD and webhook."""
    from mlops_platform.defs.profiles import WORKLOAD_IDENTITY_POD_LABELS, load_profile

    for name in ("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_UI_URL", "MLOPS_KSERVE_NAMESPACE", "MLOPS_SERVING_IMAGE",
                 "MLOPS_KSERVE_SERVICE_ACCOUNT", "MLOPS_SERVING_BASE_URL", "MLOPS_PROMETHEUS_URL", "MLOPS_CAPTURE_URI",
                 "MLOPS_LANDING_URI", "MLOPS_QUARANTINE_URI", "MLOPS_IO_URI"):
        monkeypatch.setenv(name, "x")
    profiles = {cloud: load_profile(cloud).resources["serving"] for cloud in ("aws", "azure", "gcp")}
    assert profiles["azure"].pod_labels == {"azure.workload.identity/use": "true"} == WORKLOAD_IDENTITY_POD_LABELS["azure"]
    assert profiles["aws"].pod_labels == profiles["gcp"].pod_labels == {}

    api, make = cluster
    make(mode, pod_labels=profiles["azure"].pod_labels).set_routing(NAME, "3", "4", 10, force=True)
    isvc = stored(api)
    validate(isvc)
    predictors = [isvc["spec"]["predictor"], *[c["predictor"] for c in isvc["spec"].get("canary", [])]]
    assert len(predictors) == (2 if mode == STANDARD else 1)
    assert all(p["labels"] == {"azure.workload.identity/use": "true"} for p in predictors)


def test_the_webhook_rules_refuse_what_kserve_refuses():
    """The rules this file checks against, on the shapes the webhook refuses: a canary beside a stable predictor
    without a model or storage URI (what the platform sent before), and an unnamed canary."""
    container = {"name": "kserve-container", "image": "i"}
    isvc = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Standard"}},
            "spec": {"predictor": {"containers": [container]},
                     "canary": [{"predictor": {"name": "canary", "containers": [container]}, "trafficPercent": 10}]}}
    assert "requires a stable predictor with a model" in canary_errors(isvc)
    isvc["spec"]["predictor"]["containers"] = [{**container, "env": [{"name": "STORAGE_URI", "value": "s3://b/m"}]}]
    assert canary_errors(isvc) is None
    del isvc["spec"]["canary"][0]["predictor"]["name"]
    assert canary_errors(isvc) == "canary[0] predictor.name is required"


def test_schema_rejects_what_the_api_server_would_silently_drop():
    bad = {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService", "metadata": {"name": NAME},
           "spec": {"predictor": {"containers": [{"name": "kserve-container", "image": "i"}], "canaryTrafficPercnt": 10}}}
    with pytest.raises(jsonschema.ValidationError, match="canaryTrafficPercnt"):
        SCHEMA.validate(bad)


def _vector(labels_and_values):
    return [{"metric": labels, "value": [0, str(value)]} for labels, value in labels_and_values]


def test_snapshot_from_prometheus_matches_the_local_shape(cluster):
    _, make = cluster

    def respond(query: str):
        if "requests_total" in query:
            return _vector([({"revision": "stable", "version": "3", "code": "200"}, 900),
                            ({"revision": "canary", "version": "4", "code": "500"}, 100)])
        return _vector([({"revision": "stable", "le": "0.005"}, 900), ({"revision": "stable", "le": "+Inf"}, 900)])

    with FakePrometheus(respond) as prom:
        snap = make(STANDARD, prom.url).snapshot(NAME)
        assert all(f'model="{NAME}",namespace="{NS}"' in q for q in prom.queries)
    assert snap.requests == {("stable", "200", "3"): 900.0, ("canary", "500", "4"): 100.0}
    assert snap.versions == {"stable": "3", "canary": "4"}
    assert snap.buckets["stable"] == {0.005: 900.0, math.inf: 900.0} == snap.compute["stable"]


def test_release_canary_on_the_cluster_backend_rolls_back_a_failing_canary(cluster, platform_home):
    """The deploy path the asset runs, with the cluster backend: metrics from Prometheus, rollback by patch."""
    from mlops_platform.defs.release import release_canary
    from tests.support import breast_cancer, fast, register_broken_version, registry

    api, make = cluster
    ticks = {"n": 0}
    mlflow = registry()
    broken = register_broken_version(breast_cancer())
    mlflow.record_gate(NAME, broken, True, "passed offline; fails every request online")
    stable = str(mlflow.client().create_model_version(NAME, source=artifact_uri("stable")).version)

    def respond(query: str):  # counters growing at each poll: a healthy stable, a canary answering 500s
        if "requests_total" in query:
            ticks["n"] += 1
            n = ticks["n"]
            return _vector([({"revision": "stable", "version": stable, "code": "200"}, 90 * n),
                            ({"revision": "canary", "version": broken, "code": "500"}, 10 * n)])
        return []

    with FakePrometheus(respond) as prom:
        serving = make(STANDARD, prom.url, tracking_uri=mlflow.tracking_uri)
        serving.deploy(NAME, stable)  # the stable version as the cluster serves it; only the canary is tagged in MLflow
        release = release_canary(fast(breast_cancer()), mlflow, serving, stable, broken, rows=[[0.0] * 30])
    assert release.verdict.outcome == Outcome.ROLLBACK and "error rate 100.0%" in release.verdict.reason
    patches = [r for r in api.requests if r["method"] == "PATCH"]
    assert len(patches) == 2  # canary in, canary out
    assert stored(api)["spec"]["canary"] == [] and version_of(stored(api)["spec"]["predictor"]) == stable
    canary_patch = patches[0]["body"]["spec"]["canary"][0]
    assert version_of(canary_patch["predictor"]) == broken and canary_patch["trafficPercent"] == 10
    assert mlflow.client().get_model_version(NAME, broken).tags["canary"] == "rejected"


def test_canary_lease_is_recorded_on_the_inference_service_and_reaped_when_it_runs_out(cluster, platform_home):
    from mlops_platform.core.canary import CanaryLease
    from mlops_platform.defs.release import reap_abandoned_canaries
    from tests.support import breast_cancer, register_broken_version, registry

    api, make = cluster
    mlflow = registry()
    candidate = register_broken_version(breast_cancer())
    stable = str(mlflow.client().create_model_version(NAME, source=artifact_uri("stable")).version)
    serving = make(STANDARD, tracking_uri=mlflow.tracking_uri)
    serving.deploy(NAME, stable)
    assert serving.canary_state(NAME).canary is None
    serving.set_routing(NAME, stable, candidate, 10, lease=CanaryLease("run-a", deadline=1_000.0))
    state = serving.canary_state(NAME)
    assert (state.stable, state.canary, state.lease) == (stable, candidate, CanaryLease("run-a", 1_000.0))

    assert reap_abandoned_canaries([NAME], mlflow, serving, now=999.0) == []
    assert stored(api)["spec"]["canary"] != []
    assert reap_abandoned_canaries([NAME, "no-such-model"], mlflow, serving, now=1_000.0) == [NAME]
    assert stored(api)["spec"]["canary"] == [] and serving.canary_state(NAME).canary is None
    tags = mlflow.client().get_model_version(NAME, candidate).tags
    assert tags["canary"] == "abandoned" and "lease of run-a ran out" in tags["canary_reason"]


def test_release_lock_is_a_kubernetes_lease_one_holder_at_a_time(cluster):
    import time

    from mlops_platform.integrations.serving import ReleaseBusy

    api, make = cluster
    first, second = make(STANDARD).release_lock(NAME), make(STANDARD).release_lock(NAME)
    first.acquire("run-a", ttl_s=2)
    with pytest.raises(ReleaseBusy, match="in progress by run-a"):
        second.acquire("run-b", ttl_s=2, wait_s=0)
    first.renew("run-a", ttl_s=1)
    with pytest.raises(ReleaseBusy, match="no longer holds"):
        second.renew("run-b", ttl_s=1)
    time.sleep(1.1)  # run-a died without letting go: its lease runs out
    second.acquire("run-b", ttl_s=5)
    with pytest.raises(ReleaseBusy):
        first.renew("run-a", ttl_s=5)
    second.release("run-b")
    first.acquire("run-a", ttl_s=5, wait_s=0)
    [lease] = api.leases.values()
    assert lease["spec"]["holderIdentity"] == "run-a" and lease["metadata"]["name"] == f"mlops-release-{NAME}"


def rbac_verb(method: str, path: str) -> tuple[str, str, str, str]:
    """(verb, API group, resource, namespace) of one Kubernetes API call, as the API server authorizes it."""
    from urllib.parse import parse_qs, urlparse

    url = urlparse(path)
    parts = url.path.strip("/").split("/")
    group = "" if parts[0] == "api" else parts[1]
    rest = parts[2:] if parts[0] == "api" else parts[3:]
    namespace = rest[1] if rest[:1] == ["namespaces"] else ""
    resource_and_name = rest[2:] if namespace else rest
    named = len(resource_and_name) > 1
    if method == "GET":
        verb = "watch" if parse_qs(url.query).get("watch") == ["true"] else "get" if named else "list"
    else:
        verb = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}[method]
    return verb, group, resource_and_name[0], namespace


def allowed(call: tuple[str, str, str, str], roles: list[dict]) -> bool:
    verb, group, resource, namespace = call
    return any(role["metadata"]["namespace"] == namespace and any(
        group in rule["apiGroups"] and resource in rule["resources"] and verb in rule["verbs"] for rule in role["rules"])
        for role in roles)


def test_every_call_the_cluster_backend_makes_is_allowed_by_the_rbac_we_create(cluster):
    """The whole release cycle against the API stand-in, then each recorded call matched against the Role that
    deploy/rbac binds to Dagster's service account: a call it does not allow would be a 403 in the cluster."""
    import yaml

    api, make = cluster
    serving = make(STANDARD)
    serving.deploy(NAME, "3")
    lock = serving.release_lock(NAME)
    lock.acquire("run-a", ttl_s=30)
    serving.set_routing(NAME, "3", "4", 10)
    serving.canary_state(NAME)
    lock.renew("run-a", ttl_s=30)
    serving.deploy(NAME, "4")
    lock.release("run-a")

    documents = list(yaml.safe_load_all((REPO / "deploy" / "rbac" / "dagster-models.yaml").read_text()))
    roles = [d for d in documents if d["kind"] == "Role"]
    [binding] = [d for d in documents if d["kind"] == "RoleBinding"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "dagster", "namespace": "dagster"}]
    calls = {rbac_verb(r["method"], r["path"]) for r in api.requests}
    assert {c[2] for c in calls} == {"inferenceservices", "leases"}
    assert [c for c in calls if not allowed(c, roles)] == []
    assert not allowed(("delete", "serving.kserve.io", "inferenceservices", NS), roles), "no more than it needs"
