"""The release steps the assets run, on the registry and serving interfaces: try a challenger as a canary, guard a
new champion through its watch window, keep releases of one model from interleaving, and roll back canaries whose
lease ran out. Plain functions, so the benchmarks and tests drive them as the assets do."""

from __future__ import annotations

import time
from collections.abc import Iterable

from mlops_platform.core import canary
from mlops_platform.core.canary import CanaryLease, Outcome, Verdict
from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.types import CanaryRelease
from mlops_platform.integrations.registry import CanaryStatus, ModelRegistry
from mlops_platform.integrations.serving import Endpoint, ReleaseLock, ServingBackend


def serving_options(spec: ModelSpec) -> dict:
    """The spec's batching and capture settings as the serving backends take them."""
    return {"batching": spec.serving.batching.model_dump(), "capture_rate": spec.monitoring.capture_rate}


def release_ttl(spec: ModelSpec) -> float:
    """How long one release may hold its model's lock between renewals: the canary's longest window, the champion's
    watch, and the margin."""
    return spec.canary.max_window_seconds + spec.slo.watch_seconds + spec.canary.lease_margin_seconds


def begin_release(spec: ModelSpec, serving: ServingBackend, owner: str) -> ReleaseLock:
    """Take the model's release lock, waiting for a release in progress up to the spec's limit."""
    lock = serving.release_lock(spec.registered_name)
    lock.acquire(owner, release_ttl(spec), wait_s=spec.canary.release_wait_seconds)
    return lock


def release_canary(spec: ModelSpec, registry: ModelRegistry, serving: ServingBackend, stable: str | None, version: str,
                   rows: list[list | dict], owner: str = "manual") -> CanaryRelease:
    """Serve `version` as canary beside `stable`, judge it on live traffic, roll it back unless it passes; tags the verdict.

    The canary carries a lease in its routing: whatever stops this function (an exception, a cancelled run) rolls it
    back here, and if the process dies outright the server or the lease reaper rolls it back once the lease runs out.
    """
    name = spec.registered_name
    if stable is None:
        release = CanaryRelease(version, None, Verdict(Outcome.PROMOTE, "no champion yet: nothing to compare against",
                                                       None, None))
    else:
        started = time.perf_counter()
        lease = CanaryLease(owner, time.time() + spec.canary.max_window_seconds + spec.canary.lease_margin_seconds)
        serving.set_routing(name, stable, version, spec.canary.traffic_percent, lease=lease, **serving_options(spec))
        verdict = None
        try:
            with serving.replay(name, rows, spec.canary.replay_rps):
                verdict = canary.analyze(lambda: serving.snapshot(name), spec.canary.thresholds(spec.slo),
                                         canary_version=version)
        except BaseException as exc:  # cancelled or failed mid-analysis: the canary leaves before anything else
            serving.set_routing(name, stable)
            registry.record_canary(name, version, CanaryStatus.ABANDONED, f"release interrupted: {exc!r}")
            raise
        if verdict.outcome == Outcome.PROMOTE:
            # The champion step takes over from here; the renewed lease covers the hand-over and nothing more.
            renewed = CanaryLease(owner, time.time() + spec.canary.lease_margin_seconds)
            serving.set_routing(name, stable, version, spec.canary.traffic_percent, lease=renewed)
        else:
            serving.set_routing(name, stable)  # automatic rollback: the canary leaves, stable takes 100%
        release = CanaryRelease(version, stable, verdict, round(time.perf_counter() - started, 3))
    registry.record_canary(name, version, CanaryStatus.PASSED if release.passed else CanaryStatus.REJECTED,
                           release.verdict.reason)
    return release


def guard_champion(spec: ModelSpec, registry: ModelRegistry, serving: ServingBackend, version: str, previous: str | None,
                   rows: list[list | dict]) -> tuple[Verdict, Endpoint]:
    """Watch a freshly promoted champion; on an SLO breach give `champion` and all traffic back to the previous one."""
    name = spec.registered_name
    with serving.replay(name, rows, spec.canary.replay_rps):
        verdict = canary.watch(lambda: serving.snapshot(name), spec.slo.thresholds())
    if verdict.outcome == Outcome.ROLLBACK and previous is not None:
        registry.demote(name, version, previous, reason=verdict.reason)
        return verdict, serving.deploy(name, previous, **serving_options(spec))
    return verdict, serving.deploy(name, version, **serving_options(spec))


def reap_abandoned_canaries(names: Iterable[str], registry: ModelRegistry, serving: ServingBackend,
                            now: float | None = None) -> list[str]:
    """Roll back every canary whose lease ran out with no verdict, and record why on its registry version."""
    now = time.time() if now is None else now
    reaped = []
    for name in names:
        state = serving.canary_state(name)
        if state is None or state.canary is None or state.lease is None or not state.lease.expired(now):
            continue
        try:  # the registry first, so that whoever sees the canary gone also sees why, and aliases settled
            registry.record_canary(name, state.canary, CanaryStatus.ABANDONED, state.lease.abandoned(state.stable))
        finally:
            serving.set_routing(name, state.stable)
        reaped.append(name)
    return reaped
