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

from mlops_platform.core.canary import CanaryLease, Snapshot
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


@dataclass(frozen=True)
class CanaryState:
    """What an endpoint serves right now: its stable version, and a canary with its lease if one is in flight."""

    stable: str
    canary: str | None = None
    lease: CanaryLease | None = None


class ReleaseBusy(RuntimeError):
    """Another release of the same endpoint holds its release lock."""


class ReleaseLock(ABC):
    """One release at a time per endpoint, across runs and processes: a lease that its holder renews and that
    expires by itself when the holder dies, so a killed run never blocks the next one for longer than its TTL."""

    @abstractmethod
    def acquire(self, owner: str, ttl_s: float, wait_s: float = 0.0) -> None:
        """Take the lock for `ttl_s` seconds, waiting up to `wait_s` for the holder; ReleaseBusy if it never frees."""

    @abstractmethod
    def renew(self, owner: str, ttl_s: float) -> None:
        """Extend a lock `owner` holds; ReleaseBusy if it no longer does (it expired and someone else took it)."""

    @abstractmethod
    def release(self, owner: str) -> None:
        """Let go of the lock if `owner` holds it."""


class ServingBackend(ABC):
    """The calls the release steps and the CLI make, whatever serves the models."""

    metrics: MetricsSource

    @abstractmethod
    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0, *,
                    lease: CanaryLease | None = None, force: bool = False, batching: dict | None = None,
                    capture_rate: float | None = None) -> None:
        """Serve `stable`, and `canary` to `canary_percent` of requests until its lease runs out. Only versions that
        passed the quality gate serve, unless `force`. `batching` (the spec's `serving.batching`) replaces the
        endpoint's batching, `capture_rate` (the spec's `monitoring.capture_rate`) its capture; without them the
        endpoint keeps what it has."""

    @abstractmethod
    def canary_state(self, name: str) -> CanaryState | None:
        """The endpoint's current stable and canary versions, or None when it does not exist."""

    @abstractmethod
    def release_lock(self, name: str) -> ReleaseLock:
        """The lock that keeps releases of one endpoint from interleaving."""

    @abstractmethod
    def deploy(self, name: str, version: str, *, force: bool = False, batching: dict | None = None,
               capture_rate: float | None = None) -> Endpoint:
        """Serve `version` as the only (stable) revision at 100%."""

    @abstractmethod
    def endpoint(self, name: str) -> Endpoint:
        """Where clients reach the endpoint now, and the version it serves."""

    @abstractmethod
    def publish_monitoring(self, name: str, version: str, feature_drift: dict[str, float],
                           live_quality: dict[str, float]) -> None:
        """Export the latest drift report's figures as gauges beside the request metrics (UnsupportedOperation
        where the backend cannot)."""

    @abstractmethod
    def stop(self) -> bool:
        """Stop serving everything this backend started; True if something was running."""

    def snapshot(self, name: str) -> Snapshot:
        """Cumulative request counts and latency buckets per revision (see `core.canary`)."""
        return self.metrics.snapshot(name)

    @contextmanager
    def replay(self, name: str, rows: list[list | dict], rps: float) -> Iterator[None]:
        """Traffic to judge revisions by. Real users provide it in a cluster; locally holdout rows are replayed."""
        yield
