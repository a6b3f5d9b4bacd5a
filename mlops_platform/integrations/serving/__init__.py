"""Serving backends: put registered versions behind an HTTP endpoint and report how each revision is doing.

An endpoint has a stable revision and at most one canary taking a share of its requests. The local backend drives
the platform's KServe runtime as a process on loopback (`local`); the cluster backend drives KServe
InferenceServices running the same runtime image (`kserve`). Callers never know which one they talk to.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from mlops_platform.core.canary import Snapshot
from mlops_platform.integrations.metrics import MetricsSource

# The runtime's control API, which the local backend drives: `ROUTING_PREFIX/NAME/routing`.
ROUTING_PREFIX = "/mlops/v1/endpoints"


class UnsupportedOperation(RuntimeError):
    """The backend cannot do this by design; the message says why and what to do instead."""


@dataclass(frozen=True)
class Endpoint:
    """A served model as clients reach it."""

    name: str
    version: str
    base_url: str

    @property
    def v1_predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.name}:predict"

    @property
    def v2_infer_url(self) -> str:
        return f"{self.base_url}/v2/models/{self.name}/infer"


class ServingBackend(ABC):
    """The calls the release steps and the CLI make, whatever serves the models."""

    metrics: MetricsSource

    @abstractmethod
    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0) -> None:
        """Serve `stable`, and `canary` to `canary_percent` of requests."""

    @abstractmethod
    def deploy(self, name: str, version: str) -> Endpoint:
        """Serve `version` as the only (stable) revision at 100%."""

    @abstractmethod
    def endpoint(self, name: str) -> Endpoint:
        """Where clients reach the endpoint now, and the version it serves."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop serving everything this backend started; True if something was running."""

    def snapshot(self, name: str) -> Snapshot:
        """Cumulative request counts and latency buckets per revision (see `core.canary`)."""
        return self.metrics.snapshot(name)

    @contextmanager
    def replay(self, name: str, rows: list[list[float]], rps: float) -> Iterator[None]:
        """Traffic to judge revisions by. Real users provide it in a cluster; locally holdout rows are replayed."""
        yield
