"""Traffic routing between a stable and a canary revision of one endpoint, persisted so a restart keeps it."""

from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass
from pathlib import Path

from mlops_platform.core.canary import CanaryLease
from mlops_platform.serving.batching import BatchSettings


@dataclass(frozen=True)
class Routing:
    """Which registered versions serve an endpoint, the canary's share of requests in percent, and the canary's lease."""

    stable: str
    canary: str | None = None
    canary_percent: int = 0
    lease: CanaryLease | None = None
    batching: BatchSettings | None = None  # None: every request predicted on its own
    capture_rate: float = 0.0  # share of requests whose inputs and predictions are captured

    def __post_init__(self):
        if not 0 <= self.canary_percent <= 100:
            raise ValueError(f"canary_percent must be within 0..100, got {self.canary_percent}")
        if not 0.0 <= self.capture_rate <= 1.0:
            raise ValueError(f"capture_rate must be within 0..1, got {self.capture_rate}")
        if self.canary is None and (self.canary_percent or self.lease):
            raise ValueError("canary_percent and lease need a canary version")

    def to_dict(self) -> dict:
        out = asdict(self)
        for optional in ("lease", "batching"):
            if out[optional] is None:
                del out[optional]
        return out

    @classmethod
    def from_dict(cls, raw: dict) -> Routing:
        lease, batching = raw.get("lease"), raw.get("batching")
        return cls(raw["stable"], raw.get("canary"), raw.get("canary_percent", 0),
                   CanaryLease(**lease) if lease else None, BatchSettings(**batching) if batching else None,
                   raw.get("capture_rate", 0.0))


class Splitter:
    """Sends exactly `percent` of every 100 requests to the canary, evenly spread (no randomness, no drift)."""

    def __init__(self, percent: int):
        self.percent = percent
        self._credit = 0
        self._lock = threading.Lock()

    def next_is_canary(self) -> bool:
        if self.percent <= 0:
            return False
        with self._lock:
            self._credit += self.percent
            if self._credit >= 100:
                self._credit -= 100
                return True
            return False


class RoutingStore:
    """Routing per endpoint name in one JSON file, replaced atomically on every change."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = Path(path) if path else None
        self._lock = threading.Lock()

    def load(self) -> dict[str, Routing]:
        if self.path is None or not self.path.exists():
            return {}
        return {name: Routing.from_dict(raw) for name, raw in json.loads(self.path.read_text()).items()}

    def save(self, name: str, routing: Routing | None) -> None:
        if self.path is None:
            return
        with self._lock:
            current = {n: r.to_dict() for n, r in self.load().items()}
            if routing is None:
                current.pop(name, None)
            else:
                current[name] = routing.to_dict()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_suffix(".partial")
            partial.write_text(json.dumps(current, indent=2, sort_keys=True))
            partial.replace(self.path)
