"""The model repository: endpoints backed by the MLflow registry, their routing applied atomically and persisted, and
canaries whose lease ran out rolled back by the server itself."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time

from kserve import ModelRepository
from kserve.errors import ModelNotFound

from mlops_platform.core.canary import Revision
from mlops_platform.integrations.registry import (
    Alias,
    CanaryStatus,
    LoadedModel,
    MlflowRegistry,
    load_model_uri,
    load_registered,
)
from mlops_platform.serving.capture import CaptureWriter
from mlops_platform.serving.model import EndpointModel
from mlops_platform.serving.protocol import DEFAULT_MAX_ROWS
from mlops_platform.serving.routing import Routing, RoutingStore

logger = logging.getLogger(__name__)


class EndpointRepository(ModelRepository):
    """Endpoints backed by the MLflow registry; routing is applied atomically and persisted."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, routing_path: str | None = None,
                 revision_label: Revision = Revision.STABLE, max_rows: int = DEFAULT_MAX_ROWS,
                 capture: CaptureWriter | None = None):
        super().__init__(models_dir="")
        self.max_rows = max_rows
        self.capture = capture  # where sampled requests are captured; None: capture is off on this server
        # In a cluster each revision is its own pod; its label says which one it is in the shared metrics.
        self.revision_label = Revision(revision_label)
        self.registry = MlflowRegistry(tracking_uri, registry_uri)
        self.client = self.registry.client()
        self.store = RoutingStore(routing_path)
        self._loaded: dict[tuple[str, str], LoadedModel] = {}
        self._lock = threading.RLock()  # the control API, the repository extension and the lease reaper all apply

    def _version(self, name: str, version: str) -> LoadedModel:
        key = (name, version)
        if key not in self._loaded:
            self._loaded[key] = load_registered(self.client, name, version=version)
        return self._loaded[key]

    def preload(self, name: str, version: str, model_dir: str) -> None:
        """Use a copy of the version already on local disk (in a cluster, what the storage initializer downloaded
        from the version's artifact location) instead of downloading it again through the registry."""
        self._loaded[(name, version)] = dataclasses.replace(load_model_uri(model_dir), name=name, version=version)

    def apply(self, name: str, routing: Routing) -> EndpointModel:
        """Load what the routing needs, then swap it in with one assignment: requests in flight finish on the old one."""
        with self._lock:
            stable = self._version(name, routing.stable)
            canary = self._version(name, routing.canary) if routing.canary else None
            model = EndpointModel(name, routing, stable, canary, stable_label=self.revision_label, max_rows=self.max_rows,
                                  capture=self.capture)
            previous = self.get_model(name)
            self.update(model)
            if isinstance(previous, EndpointModel):
                previous.release()
            self.store.save(name, model.routing)
            keep = {(name, routing.stable), (name, routing.canary)}
            for key in [k for k in self._loaded if k[0] == name and k not in keep]:
                del self._loaded[key]
        logger.info("endpoint %s routing %s", name, model.routing)
        return model

    def restore(self) -> list[str]:
        """At start-up: the persisted routing, else each registered model's champion; failures are logged and skipped."""
        persisted = self.store.load()
        for registered in self.client.search_registered_models():
            if registered.name not in persisted and Alias.CHAMPION in (registered.aliases or {}):
                persisted[registered.name] = Routing(stable=str(registered.aliases[Alias.CHAMPION]))
        for name, routing in persisted.items():
            try:
                self.apply(name, routing)
            except Exception:
                logger.exception("could not restore endpoint %s with %s", name, routing)
        return sorted(self.get_models())

    def routing_of(self, name: str) -> Routing | None:
        model = self.get_model(name)
        return model.routing if isinstance(model, EndpointModel) else None

    def passed_gate(self, name: str, version: str) -> bool:
        return self.registry.passed_gate(name, version)

    def reap_expired_canaries(self, now: float | None = None) -> list[str]:
        """Roll back every canary whose lease ran out with no verdict, and say so on its registry version."""
        now = time.time() if now is None else now
        reaped = []
        for name in list(self.get_models()):
            with self._lock:
                routing = self.routing_of(name)
                if routing is None or routing.canary is None or routing.lease is None or not routing.lease.expired(now):
                    continue
                reason = routing.lease.abandoned(routing.stable)
                logger.warning("endpoint %s: canary %s abandoned: %s", name, routing.canary, reason)
                try:  # the registry first, so that whoever sees the canary gone also sees why, and aliases settled
                    self.registry.record_canary(name, routing.canary, CanaryStatus.ABANDONED, reason)
                except Exception:
                    logger.exception("could not tag abandoned canary %s of %s", routing.canary, name)
                finally:
                    self.apply(name, Routing(routing.stable))
            reaped.append(name)
        return reaped

    def watch_leases(self, interval_s: float = 0.5) -> threading.Thread:
        """Reap expired canaries in the background for as long as the server runs."""

        def loop() -> None:
            while True:
                time.sleep(interval_s)
                try:
                    self.reap_expired_canaries()
                except Exception:
                    logger.exception("canary lease check failed")

        thread = threading.Thread(target=loop, name="canary-leases", daemon=True)
        thread.start()
        return thread

    def _load_champion(self, name: str) -> None:
        champion = self.registry.version_for(name, Alias.CHAMPION)
        if champion is None:
            raise ModelNotFound(name)
        with self._lock:
            current = self.routing_of(name)
            keep_canary = current is not None and current.canary not in (None, champion)
            self.apply(name, Routing(champion, current.canary, current.canary_percent, current.lease) if keep_canary
                       else Routing(champion))

    async def load(self, name: str) -> bool:
        """KServe's repository extension: serve the current champion as stable, keeping a canary in flight."""
        await asyncio.to_thread(self._load_champion, name)
        return True
