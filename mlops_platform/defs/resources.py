"""Dagster resources: thin, configurable handles that build the integrations (registry, landing storage, serving).

Assets reach infrastructure only through these, as dagster-aws's `S3Resource` hands out a client with
`get_client()`: the logic that talks to each outside system lives in `mlops_platform.integrations`.
"""

from __future__ import annotations

import pickle
from typing import Any

import dagster as dg
import fsspec
from pydantic import Field

from mlops_platform.core.spec import ModelSpec
from mlops_platform.integrations.capture import CaptureStore
from mlops_platform.integrations.registry import MlflowRegistry, ModelRegistry
from mlops_platform.integrations.serving import ServingBackend
from mlops_platform.integrations.storage import BatchCatalog, FsspecLandingStore, LandingStore, modified_at, write_whole


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking server and model registry."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None
    ui_url: str = "http://127.0.0.1:5000"

    def get_registry(self) -> ModelRegistry:
        return MlflowRegistry(self.tracking_uri, self.registry_uri, self.artifact_root, self.ui_url)


class LandingResource(dg.ConfigurableResource):
    """Where raw batches land and bad ones are quarantined: any fsspec location (a path, `s3://`, `gs://`, `abfss://`)."""

    landing_uri: str
    quarantine_uri: str
    storage_options: dict[str, Any] = Field(default_factory=dict,
                                            description="Passed to the fsspec file system, e.g. {'anon': False}.")
    capture_uri: str | None = Field(None, description="Where the serving runtime writes captured requests and "
                                    "feedback; beside landing (`…/capture`) when unset.")

    def get_store(self) -> LandingStore:
        return FsspecLandingStore(self.landing_uri, self.quarantine_uri, self.storage_options)

    def get_capture_store(self) -> CaptureStore:
        """Captured requests and the labels that came back (the feedback route, or files dropped into
        `{landing}/{model}/feedback/`)."""
        uri = self.capture_uri or f"{self.landing_uri.rstrip('/').rsplit('/', 1)[0]}/capture"
        return CaptureStore(uri, self.storage_options, labels_drop_uri=self.landing_uri)

    def get_catalog(self, spec: ModelSpec) -> BatchCatalog:
        """The model's batches: its landing folder plus the files its `dataset.source` names (unless bundled)."""
        source = None if spec.dataset.bundled else spec.dataset.source
        return BatchCatalog(self.get_store(), spec.name, source, self.storage_options)


class ServingResource(dg.ConfigurableResource):
    """Whatever serves the models; each profile binds one kind."""

    def get_backend(self) -> ServingBackend:
        raise NotImplementedError(f"{type(self).__name__} does not say how it serves models")


class LocalServingResource(ServingResource):
    """The platform's KServe runtime as one process on loopback, started on first use and reused."""

    mlflow: MLflowResource
    host: str = "127.0.0.1"
    port: int = 8080
    grpc_port: int | None = Field(None, description="Open Inference Protocol over gRPC on the same host; off if unset")
    state_dir: str
    start_timeout_s: float = 90.0
    capture_uri: str | None = Field(None, description="Where the server writes captured requests; capture off if unset")

    def get_backend(self) -> ServingBackend:
        from mlops_platform.integrations.serving.local import LocalServing, ServerProcess

        return LocalServing(ServerProcess(self.state_dir, self.host, self.port, self.mlflow.tracking_uri,
                                          self.mlflow.registry_uri, self.start_timeout_s, self.grpc_port,
                                          self.capture_uri))


class KServeServingResource(ServingResource):
    """InferenceServices in a Kubernetes cluster running the same runtime image; metrics from Prometheus."""

    namespace: str
    image: str
    tracking_uri: str
    service_account: str | None = None
    deployment_mode: str = "Standard"
    prometheus_url: str = "http://kube-prometheus-stack-prometheus.monitoring:9090"
    base_url: str | None = None
    kubeconfig: str | None = None
    ready_timeout_s: int = 600
    ready_poll_s: float = 5.0
    capture_uri: str | None = None
    pod_labels: dict[str, str] = {}  # on every predictor pod: the cloud's workload-identity opt-in, where it has one

    def get_backend(self) -> ServingBackend:
        from mlops_platform.integrations.serving.kserve import KServeServing

        return KServeServing(self.namespace, self.image, self.tracking_uri, service_account=self.service_account,
                             deployment_mode=self.deployment_mode, prometheus_url=self.prometheus_url,
                             base_url=self.base_url, kubeconfig=self.kubeconfig, ready_timeout_s=self.ready_timeout_s,
                             ready_poll_s=self.ready_poll_s, capture_uri=self.capture_uri, pod_labels=self.pod_labels)


KEEP_RUNS = 20  # per asset; a run still executing is always among the newest


class RunScopedPickleIOManager(dg.ConfigurableIOManager):
    """Asset values pickled under `base_uri` (a local folder, or `s3://`, `gs://`, `abfss://` in the clouds, through
    the same fsspec layer as the landing store), one object per run plus the latest one.

    Within a run, each step reads exactly what its upstream step wrote in that run, so two runs of the same model at
    once never read each other's hand-offs (with one object per asset they did: a run could judge another run's
    challenger). Materializing one asset on its own reads the latest value of its upstream assets.
    """

    base_uri: str

    def _folder(self, key: dg.AssetKey) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.base_uri)
        return fs, "/".join([root.rstrip("/"), *key.path])

    def handle_output(self, context: dg.OutputContext, obj: Any) -> None:
        fs, folder = self._folder(context.asset_key)
        payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        for target in (f"{folder}/runs/{context.run_id}.pkl", f"{folder}/latest.pkl"):
            write_whole(fs, target, payload)
        fs.invalidate_cache(f"{folder}/runs")  # listings are cached per file system object, and adlfs ignores `refresh`
        runs = [e for e in fs.ls(f"{folder}/runs", detail=True) if e["name"].endswith(".pkl")]
        for stale in sorted(runs, key=modified_at)[:-KEEP_RUNS]:
            fs.rm_file(stale["name"])

    def load_input(self, context: dg.InputContext) -> Any:
        fs, folder = self._folder(context.asset_key)
        try:
            run_id = context.upstream_output.run_id  # the run that wrote the upstream value, when it ran in this run
        except (AttributeError, dg.DagsterInvariantViolationError):
            run_id = None
        if run_id:
            try:
                return pickle.loads(fs.cat_file(f"{folder}/runs/{run_id}.pkl"))
            except FileNotFoundError:  # not written in this run: a lone materialization reads the latest
                pass
        return pickle.loads(fs.cat_file(f"{folder}/latest.pkl"))
