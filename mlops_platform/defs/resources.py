"""Dagster resources: thin, configurable handles that build the integrations (registry, landing storage, serving).

Assets reach infrastructure only through these, as dagster-aws's `S3Resource` hands out a client with
`get_client()`: the logic that talks to each outside system lives in `mlops_platform.integrations`.
"""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import Field

from mlops_platform.integrations.registry import MlflowRegistry, ModelRegistry
from mlops_platform.integrations.serving import ServingBackend
from mlops_platform.integrations.storage import FsspecLandingStore, LandingStore


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

    def get_store(self) -> LandingStore:
        return FsspecLandingStore(self.landing_uri, self.quarantine_uri, self.storage_options)


class ServingResource(dg.ConfigurableResource):
    """Whatever serves the models; each profile binds one kind."""

    def get_backend(self) -> ServingBackend:
        raise NotImplementedError(f"{type(self).__name__} does not say how it serves models")


class LocalServingResource(ServingResource):
    """The platform's KServe runtime as one process on loopback, started on first use and reused."""

    mlflow: MLflowResource
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: str
    start_timeout_s: float = 90.0

    def get_backend(self) -> ServingBackend:
        from mlops_platform.integrations.serving.local import LocalServing, ServerProcess

        return LocalServing(ServerProcess(self.state_dir, self.host, self.port, self.mlflow.tracking_uri,
                                          self.mlflow.registry_uri, self.start_timeout_s))


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

    def get_backend(self) -> ServingBackend:
        from mlops_platform.integrations.serving.kserve import KServeServing

        return KServeServing(self.namespace, self.image, self.tracking_uri, service_account=self.service_account,
                             deployment_mode=self.deployment_mode, prometheus_url=self.prometheus_url,
                             base_url=self.base_url, kubeconfig=self.kubeconfig, ready_timeout_s=self.ready_timeout_s,
                             ready_poll_s=self.ready_poll_s)
