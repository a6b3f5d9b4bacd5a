"""Canary analysis: request counters and latency histograms of two revisions in, promote / roll back / wait out.

Works on cumulative snapshots, whether read from the server's own `/metrics` or from Prometheus (the readers live in
`integrations.metrics`), so the decision is the same code locally and in the cluster. No Dagster, no HTTP here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from enum import StrEnum


class Outcome(StrEnum):
    """What an analysis decides about a revision."""

    PROMOTE = "promote"
    ROLLBACK = "rollback"
    INCONCLUSIVE = "inconclusive"


class Revision(StrEnum):
    """The two revisions an endpoint can serve at once; also the `revision` label on request metrics."""

    STABLE = "stable"
    CANARY = "canary"


@dataclass(frozen=True)
class CanaryLease:
    """Who started a canary and until when it may run unjudged; past the deadline anyone may roll it back."""

    owner: str
    deadline: float  # Unix time

    def expired(self, now: float) -> bool:
        return now >= self.deadline

    def abandoned(self, stable: str) -> str:
        """Why a canary whose lease ran out was rolled back, for the registry and the logs."""
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.deadline))
        return f"lease of {self.owner} ran out at {when} with no verdict; rolled back to version {stable}"


REQUESTS_METRIC = "mlops_inference_requests_total"
LATENCY_METRIC = "mlops_inference_request_duration_seconds"
COMPUTE_METRIC = "mlops_inference_compute_seconds"


@dataclass
class Snapshot:
    """Cumulative counts for one endpoint: requests by (revision, HTTP code, model version), latency buckets by revision."""

    requests: dict[tuple[str, str, str], float] = field(default_factory=dict)
    buckets: dict[str, dict[float, float]] = field(default_factory=dict)
    compute: dict[str, dict[float, float]] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)


def histogram_quantile(q: float, cumulative: dict[float, float]) -> float | None:
    """Prometheus's estimate: linear interpolation inside the bucket where the quantile falls."""
    bounds = sorted(cumulative)
    if not bounds or cumulative[bounds[-1]] <= 0:
        return None
    rank = q * cumulative[bounds[-1]]
    lower_bound, lower_count = 0.0, 0.0
    for bound in bounds:
        count = cumulative[bound]
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # beyond the last finite bucket: the best we can say is "at least this"
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return lower_bound


@dataclass
class RevisionWindow:
    """One revision's traffic between two snapshots."""

    revision: str
    requests: int
    errors: int
    p95_ms: float | None
    compute_p95_ms: float | None = None

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def window(before: Snapshot, after: Snapshot, revision: str, version: str | None = None) -> RevisionWindow:
    """Requests, server errors (5xx) and p95 latency of one revision between two snapshots.

    Only what the server could be blamed for counts: a client's mistake (4xx) is neither a request to judge nor an
    error, so a flood of malformed requests can neither fail a canary nor roll back a champion. With `version`, only
    requests that version served count, so a verdict is never about another release's traffic.
    """
    requests = errors = 0.0
    for key, count in after.requests.items():
        rev, code, served = key
        if rev != revision or code.startswith("4") or (version is not None and served != version):
            continue
        previous = before.requests.get(key, 0.0)
        delta = count - previous if count >= previous else count  # a restarted server counts from zero again
        requests += delta
        if code.startswith("5"):
            errors += delta

    def p95_ms(earlier: dict, later: dict) -> float | None:
        old = earlier.get(revision, {})
        value = histogram_quantile(0.95, {le: n - old.get(le, 0.0) if n >= old.get(le, 0.0) else n
                                          for le, n in later.get(revision, {}).items()})
        return None if value is None else value * 1000

    return RevisionWindow(revision, int(round(requests)), int(round(errors)), p95_ms(before.buckets, after.buckets),
                          p95_ms(before.compute, after.compute))


@dataclass(frozen=True)
class CanaryThresholds:
    """When a canary is good enough, and how long to look before saying so."""

    min_requests: int = 50
    max_error_rate: float = 0.01
    max_error_rate_increase: float = 0.005
    max_latency_ratio: float = 2.0
    min_latency_increase_ms: float = 1.0
    window_seconds: float = 5.0
    max_window_seconds: float = 30.0
    poll_seconds: float = 0.25
    max_p95_ms: float | None = None  # the SLO's latency bound: a canary above it is never promoted


@dataclass
class Verdict:
    outcome: Outcome
    reason: str
    stable: RevisionWindow | None
    canary: RevisionWindow | None
    elapsed_s: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


def judge(stable: RevisionWindow, canary: RevisionWindow, t: CanaryThresholds, final: bool) -> Verdict | None:
    """A verdict, or None while more traffic is needed. Failures decide as soon as the evidence suffices."""
    if canary.requests >= min(t.min_requests, 20) and canary.error_rate > max(t.max_error_rate,
                                                                             stable.error_rate + t.max_error_rate_increase):
        return Verdict(Outcome.ROLLBACK, f"canary error rate {canary.error_rate:.1%} over {canary.requests} requests "
                                 f"(stable {stable.error_rate:.1%}, limit {t.max_error_rate:.1%})", stable, canary)
    early = canary.requests >= min(t.min_requests, 20)
    if early and t.max_p95_ms is not None and canary.p95_ms is not None and canary.p95_ms > t.max_p95_ms:
        return Verdict(Outcome.ROLLBACK, f"canary p95 latency {canary.p95_ms:.1f} ms exceeds the SLO's {t.max_p95_ms:g} ms "
                                 f"(stable {stable.p95_ms or 0:.1f} ms)", stable, canary)
    if canary.requests < t.min_requests:
        if final:
            return Verdict(Outcome.INCONCLUSIVE, f"only {canary.requests} canary requests, fewer than the {t.min_requests} "
                                         f"needed to decide", stable, canary)
        return None
    # The model's own compute time when both revisions report it (queueing they share cancels out), else end to end.
    measure = "model compute" if canary.compute_p95_ms is not None and stable.compute_p95_ms is not None else "end-to-end"
    c_p95, s_p95 = (canary.compute_p95_ms, stable.compute_p95_ms) if measure == "model compute" else (canary.p95_ms, stable.p95_ms)
    slower = c_p95 is not None and s_p95 is not None and c_p95 > s_p95 * t.max_latency_ratio
    if slower and c_p95 - s_p95 > t.min_latency_increase_ms:
        return Verdict(Outcome.ROLLBACK, f"canary p95 latency {c_p95:.2f} ms against stable {s_p95:.2f} ms in {measure} "
                                         f"(limit ×{t.max_latency_ratio:g})", stable, canary)
    if not final:
        return None
    return Verdict(Outcome.PROMOTE, f"canary healthy over {canary.requests} requests: error rate {canary.error_rate:.1%}, "
                            f"p95 {canary.p95_ms or 0:.1f} ms (stable {stable.p95_ms or 0:.1f} ms)", stable, canary)


def analyze(snapshot: Callable[[], Snapshot], t: CanaryThresholds, *, canary_version: str | None = None,
            clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Poll until a verdict: early rollback on clear failure, promotion after the window, inconclusive at the limit.
    With `canary_version`, the canary is judged on the requests that version served, and no other."""
    start, baseline = clock(), snapshot()
    while True:
        sleep(t.poll_seconds)
        elapsed = clock() - start
        current = snapshot()
        s = window(baseline, current, Revision.STABLE)
        c = window(baseline, current, Revision.CANARY, canary_version)
        final = elapsed >= t.max_window_seconds or (elapsed >= t.window_seconds and c.requests >= t.min_requests)
        verdict = judge(s, c, t, final)
        if verdict is not None:
            verdict.elapsed_s = round(elapsed, 3)
            return verdict


@dataclass(frozen=True)
class SloThresholds:
    """What a freshly promoted champion must keep up during its watch window."""

    watch_seconds: float = 5.0
    min_requests: int = 20
    max_error_rate: float = 0.01
    max_p95_ms: float = 250.0
    poll_seconds: float = 0.25


def watch(snapshot: Callable[[], Snapshot], slo: SloThresholds, *, revision: str = Revision.STABLE,
          clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep) -> Verdict:
    """Watch the stable revision; a breach ends the watch at once with ROLLBACK, else PROMOTE (keep) at the end."""
    start, baseline = clock(), snapshot()
    while True:
        sleep(slo.poll_seconds)
        elapsed = clock() - start
        w = window(baseline, snapshot(), revision)
        enough = w.requests >= slo.min_requests
        if enough and w.error_rate > slo.max_error_rate:
            return Verdict(Outcome.ROLLBACK, f"error rate {w.error_rate:.1%} over {w.requests} requests breaches the SLO "
                                     f"of {slo.max_error_rate:.1%}", w, None, round(elapsed, 3))
        if enough and w.p95_ms is not None and w.p95_ms > slo.max_p95_ms:
            return Verdict(Outcome.ROLLBACK, f"p95 latency {w.p95_ms:.1f} ms breaches the SLO of {slo.max_p95_ms:g} ms",
                           w, None, round(elapsed, 3))
        if elapsed >= slo.watch_seconds:
            reason = (f"held its SLO over {w.requests} requests" if enough
                      else f"only {w.requests} requests in the watch window; nothing to judge")
            return Verdict(Outcome.PROMOTE if enough else Outcome.INCONCLUSIVE, reason, w, None, round(elapsed, 3))
