"""The cluster serving backend: InferenceServices running the platform's own KServe runtime image.

The same `ServingBackend` calls as the local server, mapped onto KServe 0.20+:
  * Standard (RawDeployment) mode: the stable revision is `spec.predictor`, the canary is `spec.canary[0]` (named
    `canary`) with its `trafficPercent` (routing needs the Gateway API). Promotion and rollback patch both.
  * Each predictor names its version's artifacts in `STORAGE_URI`: KServe's webhook allows a canary only beside a
    stable predictor with a storage URI, and its storage initializer downloads them to /mnt/models, where the
    runtime loads them (`--model-dir`) instead of downloading them again.
  * Serverless mode: Knative revisions; the candidate becomes `spec.predictor` with `canaryTrafficPercent`, the
    previous rolled-out revision keeps the rest. Rollback is `canaryTrafficPercent: 0`, promotion `100`.
Revisions are judged from Prometheus, which scrapes the same request metrics the local server exposes.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from mlops_platform.core.canary import CanaryLease, Revision
from mlops_platform.integrations.metrics import PrometheusMetrics
from mlops_platform.integrations.registry import MlflowRegistry
from mlops_platform.integrations.serving import (
    CanaryState,
    Endpoint,
    ReleaseBusy,
    ReleaseLock,
    ServingBackend,
    UnsupportedOperation,
)

RUNTIME_PORT = 8080
ROUTING_ANNOTATION = "mlops.platform/routing"
LEASE_PREFIX = "mlops-release-"


class DeploymentMode(StrEnum):
    """KServe's `serving.kserve.io/deploymentMode`."""

    STANDARD = "Standard"
    SERVERLESS = "Serverless"


MODEL_DIR = "/mnt/models"  # where KServe's storage initializer puts what STORAGE_URI names
CANARY_PREDICTOR = "canary"  # KServe's webhook requires each canary predictor to have a name, unlike the stable one


def predictor_spec(name: str, version: str, revision: Revision, *, image: str, tracking_uri: str,
                   service_account: str | None, storage_uris: dict[str, str], canary_traffic_percent: int | None = None,
                   batching: dict | None = None, capture: dict | None = None, name_as: str | None = None,
                   pod_labels: dict[str, str] | None = None) -> Any:
    """Our runtime as a custom predictor container, pinned to one registered version and labelled with its revision;
    `name_as` names the predictor (KServe requires a name on each canary predictor, and only there); `pod_labels` go
    on its pods (KServe copies a component's `labels` there), e.g. Azure's workload-identity opt-in."""
    from kserve import V1beta1PredictorSpec
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ResourceRequirements

    container = V1Container(
        name="kserve-container",
        image=image,
        args=["--host", "0.0.0.0", "--port", str(RUNTIME_PORT), "--tracking-uri", tracking_uri,
              "--model", f"{name}={version}", "--model-dir", MODEL_DIR, "--revision", str(revision),
              *(["--batching", json.dumps(batching, sort_keys=True)] if batching else []),
              *(["--capture-uri", capture["uri"], "--capture-rate", str(capture["rate"])] if capture else [])],
        env=[V1EnvVar(name="MLOPS_MODEL_VERSION", value=version),
             V1EnvVar(name="STORAGE_URI", value=storage_uris[version])],
        ports=[V1ContainerPort(container_port=RUNTIME_PORT, protocol="TCP")],
        resources=V1ResourceRequirements(requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}),
    )
    return V1beta1PredictorSpec(containers=[container], service_account_name=service_account, min_replicas=1,
                                canary_traffic_percent=canary_traffic_percent, name=name_as, labels=pod_labels or None)


def inference_service(name: str, stable: str, canary: str | None, canary_percent: int, *, namespace: str, image: str,
                      tracking_uri: str, storage_uris: dict[str, str], service_account: str | None = None,
                      mode: DeploymentMode = DeploymentMode.STANDARD, serverless_percent: int | None = None,
                      lease: CanaryLease | None = None, batching: dict | None = None, capture: dict | None = None,
                      pod_labels: dict[str, str] | None = None) -> Any:
    """The whole InferenceService for one endpoint and its routing; the routing and the canary's lease are also kept
    in an annotation, where the lease reaper reads them."""
    from kserve import V1beta1CanarySpec, V1beta1InferenceService, V1beta1InferenceServiceSpec, constants
    from kubernetes.client import V1ObjectMeta

    common = {"image": image, "tracking_uri": tracking_uri, "service_account": service_account, "batching": batching,
              "capture": capture, "storage_uris": storage_uris, "pod_labels": pod_labels}
    if mode == DeploymentMode.STANDARD:
        spec = V1beta1InferenceServiceSpec(
            predictor=predictor_spec(name, stable, Revision.STABLE, **common),
            # An empty list, not None: a merge patch must be able to remove a canary that is there.
            canary=[V1beta1CanarySpec(predictor=predictor_spec(name, canary, Revision.CANARY, name_as=CANARY_PREDICTOR,
                                                               **common),
                                      traffic_percent=canary_percent)] if canary else [],
        )
    else:
        candidate = canary or stable
        spec = V1beta1InferenceServiceSpec(predictor=predictor_spec(
            name, candidate, Revision.CANARY if canary else Revision.STABLE, canary_traffic_percent=serverless_percent,
            **common))
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=name, namespace=namespace,
            annotations={"serving.kserve.io/deploymentMode": str(mode),
                         ROUTING_ANNOTATION: json.dumps({"stable": stable, "canary": canary, "batching": batching,
                                                         "capture_rate": capture["rate"] if capture else 0.0,
                                                         "lease": asdict(lease) if lease and canary else None})},
            labels={"app.kubernetes.io/part-of": "mlops-platform", "mlops.platform/model": name},
        ),
        spec=spec,
    )


def _routing_annotation(isvc: dict) -> dict:
    return json.loads(isvc.get("metadata", {}).get("annotations", {}).get(ROUTING_ANNOTATION) or "{}")


def _version_arg(predictor: dict, name: str) -> str | None:
    container = (predictor.get("containers") or [{}])[0]
    return next((a.split("=", 1)[1] for a in container.get("args", []) if a.startswith(f"{name}=")), None)


class KServeServing(ServingBackend):
    """Creates and patches one InferenceService per model; reads revision metrics from Prometheus."""

    def __init__(self, namespace: str, image: str, tracking_uri: str, *, service_account: str | None = None,
                 deployment_mode: DeploymentMode | str = DeploymentMode.STANDARD,
                 prometheus_url: str = "http://kube-prometheus-stack-prometheus.monitoring:9090",
                 base_url: str | None = None, kubeconfig: str | None = None, ready_timeout_s: int = 600,
                 ready_poll_s: float = 5.0, capture_uri: str | None = None, pod_labels: dict[str, str] | None = None):
        self.namespace, self.image, self.tracking_uri = namespace, image, tracking_uri
        self.pod_labels = dict(pod_labels or {})  # on every predictor pod (the cloud's workload-identity opt-in)
        self.capture_uri = capture_uri  # the bucket path predictor pods write captured requests to
        self.service_account = service_account
        self.mode = DeploymentMode(deployment_mode)
        self.base_url = base_url
        self.kubeconfig = kubeconfig  # default: the pod's service account in a cluster, ~/.kube/config outside
        self.ready_timeout_s, self.ready_poll_s = ready_timeout_s, ready_poll_s
        self.metrics = PrometheusMetrics(prometheus_url, namespace)

    def storage_uris(self, name: str, versions: list[str]) -> dict[str, str]:
        """Where each version's model artifacts are (s3://, gs://, wasbs://...), as the registry says."""
        client = MlflowRegistry(self.tracking_uri).client()
        return {v: client.get_model_version_download_uri(name, v) for v in versions}

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

    def _apply(self, name: str, stable: str, canary: str | None, canary_percent: int, serverless_percent: int | None,
               lease: CanaryLease | None = None, batching: dict | None = None, capture_rate: float | None = None) -> dict:
        client = self.client()
        current = self._current(client, name)
        if batching is None and current is not None:  # keep what runs: changed arguments would restart the pods
            batching = _routing_annotation(current).get("batching")
        if capture_rate is None and current is not None:
            capture_rate = _routing_annotation(current).get("capture_rate")
        capture = {"uri": self.capture_uri, "rate": capture_rate} if self.capture_uri and capture_rate else None
        versions = [v for v in (stable, canary) if v]
        isvc = inference_service(name, stable, canary, canary_percent, namespace=self.namespace, image=self.image,
                                 tracking_uri=self.tracking_uri, storage_uris=self.storage_uris(name, versions),
                                 service_account=self.service_account, pod_labels=self.pod_labels,
                                 mode=self.mode, serverless_percent=serverless_percent, lease=lease, batching=batching,
                                 capture=capture)
        if current is None:
            client.create(isvc, namespace=self.namespace)
        else:
            client.patch(name, isvc, namespace=self.namespace)
        client.wait_isvc_ready(name, namespace=self.namespace, timeout_seconds=self.ready_timeout_s,
                               polling_interval=self.ready_poll_s)
        return client.get(name, namespace=self.namespace)

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0, *,
                    lease: CanaryLease | None = None, force: bool = False, batching: dict | None = None,
                    capture_rate: float | None = None) -> None:
        # Who may patch InferenceServices is Kubernetes RBAC's to say (the Dagster service account); `force` is for
        # the local control API's quality-gate check and has nothing to switch off here.
        if self.mode == DeploymentMode.STANDARD:
            self._apply(name, stable, canary, canary_percent, None, lease, batching, capture_rate)
        elif canary is not None:
            self._apply(name, stable, canary, canary_percent, canary_percent, lease, batching, capture_rate)
        else:
            # Knative keeps the previous rolled-out revision: 0% to the candidate is the documented rollback.
            current = self._current(self.client(), name)
            candidate = _version_arg((current or {}).get("spec", {}).get("predictor", {}), name)
            rolling_back = candidate not in (None, stable)
            self._apply(name, stable, candidate if rolling_back else None, 0, 0 if rolling_back else None)

    def deploy(self, name: str, version: str, *, force: bool = False, batching: dict | None = None,
               capture_rate: float | None = None) -> Endpoint:
        if self.mode == DeploymentMode.SERVERLESS:
            current = self._current(self.client(), name)
            if current is not None and current["spec"]["predictor"].get("canaryTrafficPercent") is not None:
                # promotion: candidate at 100%
                status = self._apply(name, version, version, 100, 100, batching=batching, capture_rate=capture_rate)
                return self._endpoint(name, version, status)
        status = self._apply(name, version, None, 0, None, batching=batching, capture_rate=capture_rate)
        return self._endpoint(name, version, status)

    def canary_state(self, name: str) -> CanaryState | None:
        current = self._current(self.client(), name)
        if current is None:
            return None
        raw = _routing_annotation(current) or None
        if raw is None:  # created before routing was recorded: the predictor is all there is
            return CanaryState(_version_arg(current["spec"]["predictor"], name) or "")
        return CanaryState(raw["stable"], raw.get("canary"), CanaryLease(**raw["lease"]) if raw.get("lease") else None)

    def release_lock(self, name: str) -> ReleaseLock:
        return KubernetesLeaseLock(self.namespace, f"{LEASE_PREFIX}{name}", self.kubeconfig)

    def endpoint(self, name: str) -> Endpoint:
        current = self._current(self.client(), name)
        if current is None:
            raise RuntimeError(f"no InferenceService {name!r} in namespace {self.namespace!r}")
        version = _version_arg(current["spec"]["predictor"], name) or ""
        return self._endpoint(name, version, current)

    def publish_monitoring(self, name: str, version: str, feature_drift: dict[str, float],
                           live_quality: dict[str, float]) -> None:
        # Each predictor pod exports its own metrics; a cluster-wide gauge needs a Pushgateway, not yet deployed.
        raise UnsupportedOperation("in a cluster the drift gauges are not exported yet (no Pushgateway); the drift "
                                   "report's figures are in its Dagster metadata and its MLflow run")

    def stop(self) -> bool:
        raise UnsupportedOperation(
            "the cluster's model servers are InferenceServices that Kubernetes keeps running; remove one with "
            f"`kubectl delete inferenceservice NAME -n {self.namespace}`")

    def _endpoint(self, name: str, version: str, status: dict) -> Endpoint:
        url = self.base_url or status.get("status", {}).get("url", "")
        return Endpoint(name=name, version=version, base_url=url.rstrip("/"))


class KubernetesLeaseLock(ReleaseLock):
    """The release lock as a `coordination.k8s.io/v1` Lease; the API server's resourceVersion check makes each take
    atomic, so two Dagster runs (or pods) never both hold it."""

    def __init__(self, namespace: str, lease_name: str, kubeconfig: str | None = None):
        self.namespace, self.lease_name, self.kubeconfig = namespace, lease_name, kubeconfig

    def _api(self) -> Any:
        from kubernetes import client, config

        if self.kubeconfig:
            return client.CoordinationV1Api(config.new_client_from_config(config_file=self.kubeconfig))
        config.load_incluster_config()
        return client.CoordinationV1Api()

    def _take(self, owner: str, ttl_s: float, renewing: bool) -> str | None:
        """Take or extend the lease; returns the holder after the attempt (None when nobody holds it)."""
        from kubernetes.client import V1Lease, V1LeaseSpec, V1ObjectMeta
        from kubernetes.client.rest import ApiException

        api = self._api()
        now = datetime.now(UTC)
        spec = V1LeaseSpec(holder_identity=owner, lease_duration_seconds=max(1, int(ttl_s + 0.999)), renew_time=now,
                           acquire_time=now)
        try:
            current = api.read_namespaced_lease(self.lease_name, self.namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise
            if renewing:  # gone: whoever renews no longer holds it
                return None
            try:
                api.create_namespaced_lease(self.namespace, V1Lease(metadata=V1ObjectMeta(name=self.lease_name), spec=spec))
                return owner
            except ApiException as create_exc:
                if create_exc.status == 409:  # someone created it first
                    return None
                raise
        holder = current.spec.holder_identity
        renewed = current.spec.renew_time or current.spec.acquire_time
        expired = renewed is None or renewed + timedelta(seconds=current.spec.lease_duration_seconds or 0) <= now
        if holder == owner or (not renewing and (holder is None or expired)):
            current.spec = spec
            try:
                api.replace_namespaced_lease(self.lease_name, self.namespace, current)  # carries resourceVersion
                return owner
            except ApiException as exc:
                if exc.status == 409:  # changed under us: somebody else took it
                    return None
                raise
        return holder

    def acquire(self, owner: str, ttl_s: float, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        while (holder := self._take(owner, ttl_s, renewing=False)) != owner:
            if time.monotonic() >= deadline:
                raise ReleaseBusy(f"a release of {self.lease_name.removeprefix(LEASE_PREFIX)} is in progress by "
                                  f"{holder or 'someone'}; one release at a time per endpoint")
            time.sleep(1.0)

    def renew(self, owner: str, ttl_s: float) -> None:
        if self._take(owner, ttl_s, renewing=True) != owner:
            raise ReleaseBusy(f"{owner} no longer holds the release lock {self.lease_name}")

    def release(self, owner: str) -> None:
        from kubernetes.client.rest import ApiException

        api = self._api()
        try:
            current = api.read_namespaced_lease(self.lease_name, self.namespace)
            if current.spec.holder_identity == owner:
                current.spec.holder_identity = None
                api.replace_namespaced_lease(self.lease_name, self.namespace, current)
        except ApiException as exc:
            if exc.status not in (404, 409):
                raise
