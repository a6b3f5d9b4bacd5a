"""The release steps the assets run, on the registry and serving interfaces: try a challenger as a canary, and guard a
new champion through its watch window. Plain functions, so the benchmarks and tests drive them as the assets do."""

from __future__ import annotations

import time

from mlops_platform.core import canary
from mlops_platform.core.canary import Outcome, Verdict
from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.types import CanaryRelease
from mlops_platform.integrations.registry import ModelRegistry
from mlops_platform.integrations.serving import Endpoint, ServingBackend


def release_canary(spec: ModelSpec, registry: ModelRegistry, serving: ServingBackend, stable: str | None, version: str,
                   rows: list[list[float]]) -> CanaryRelease:
    """Serve `version` as canary beside `stable`, judge it on live traffic, roll it back unless it passes; tags the verdict."""
    name = spec.registered_name
    if stable is None:
        release = CanaryRelease(version, None, Verdict(Outcome.PROMOTE, "no champion yet: nothing to compare against",
                                                       None, None))
    else:
        started = time.perf_counter()
        serving.set_routing(name, stable, version, spec.canary.traffic_percent)
        with serving.replay(name, rows, spec.canary.replay_rps):
            verdict = canary.analyze(lambda: serving.snapshot(name), spec.canary.thresholds(spec.slo))
        if verdict.outcome != Outcome.PROMOTE:
            serving.set_routing(name, stable)  # automatic rollback: the canary leaves, stable takes 100%
        release = CanaryRelease(version, stable, verdict, round(time.perf_counter() - started, 3))
    registry.tag_version(name, version, {"canary": "passed" if release.passed else "rejected",
                                         "canary_reason": release.verdict.reason})
    return release


def guard_champion(spec: ModelSpec, registry: ModelRegistry, serving: ServingBackend, version: str, previous: str | None,
                   rows: list[list[float]]) -> tuple[Verdict, Endpoint]:
    """Watch a freshly promoted champion; on an SLO breach give `champion` and all traffic back to the previous one."""
    name = spec.registered_name
    with serving.replay(name, rows, spec.canary.replay_rps):
        verdict = canary.watch(lambda: serving.snapshot(name), spec.slo.thresholds())
    if verdict.outcome == Outcome.ROLLBACK and previous is not None:
        registry.demote(name, version, previous, reason=verdict.reason)
        return verdict, serving.deploy(name, previous)
    return verdict, serving.deploy(name, version)
