"""Canary analysis in the pure core: quantiles, windows, and the promote / roll back / wait decisions."""

from __future__ import annotations

import math

import pytest

from mlops_platform.core import canary
from mlops_platform.core.canary import CanaryThresholds, Outcome, Revision, SloThresholds, Snapshot


def test_histogram_quantile_interpolates_like_prometheus():
    buckets = {0.001: 50.0, 0.01: 90.0, math.inf: 90.0}
    assert canary.histogram_quantile(0.5, buckets) == pytest.approx(0.0009)  # rank 45 of 50 in the first bucket
    assert canary.histogram_quantile(0.95, buckets) == pytest.approx(0.001 + 0.009 * (85.5 - 50) / 40)
    assert canary.histogram_quantile(0.75, buckets) == pytest.approx(0.001 + 0.009 * (67.5 - 50) / 40)
    assert canary.histogram_quantile(0.95, {0.01: 0.0, math.inf: 0.0}) is None


def test_window_counts_only_what_happened_between_snapshots():
    before = Snapshot(requests={("stable", "200", "3"): 90.0, ("canary", "500", "4"): 4.0, ("canary", "200", "4"): 6.0})
    after = Snapshot(requests={("stable", "200", "3"): 90.0, ("canary", "500", "4"): 9.0, ("canary", "200", "4"): 16.0})
    w = canary.window(before, after, Revision.CANARY)
    assert (w.requests, w.errors) == (15, 5)
    assert canary.window(before, after, Revision.STABLE).requests == 0


def test_client_errors_are_neither_requests_to_judge_nor_errors():
    before = Snapshot()
    after = Snapshot(requests={("canary", "200", "4"): 10.0, ("canary", "400", "4"): 500.0, ("canary", "415", "4"): 90.0,
                               ("canary", "503", "4"): 1.0})
    w = canary.window(before, after, Revision.CANARY)
    assert (w.requests, w.errors) == (11, 1)


def test_a_canary_is_judged_only_on_what_its_own_version_served():
    before = Snapshot()
    after = Snapshot(requests={("canary", "200", "5"): 60.0, ("canary", "500", "6"): 40.0})
    assert canary.window(before, after, Revision.CANARY, "5").errors == 0
    assert canary.window(before, after, Revision.CANARY, "6").error_rate == 1.0
    assert canary.window(before, after, Revision.CANARY).requests == 100


def test_an_analysis_ignores_another_versions_canary_traffic():
    clock = FakeClock()
    t = CanaryThresholds(min_requests=20, window_seconds=2.0, max_window_seconds=10.0, poll_seconds=0.5)
    # Version 2 is the canary under analysis and healthy; version 9's failing requests belong to someone else.
    tick = {"n": 0}

    def snapshot():
        n = tick["n"]
        tick["n"] += 1
        return Snapshot(requests={("stable", "200", "1"): 45.0 * n, ("canary", "200", "2"): 5.0 * n,
                                  ("canary", "500", "9"): 5.0 * n})

    verdict = canary.analyze(snapshot, t, canary_version="2", clock=clock, sleep=clock.sleep)
    assert verdict.outcome == Outcome.PROMOTE


def test_a_lease_expires_at_its_deadline_and_says_why():
    lease = canary.CanaryLease("run-1", deadline=1_000.0)
    assert not lease.expired(999.9) and lease.expired(1_000.0)
    assert "lease of run-1 ran out" in lease.abandoned("3") and "rolled back to version 3" in lease.abandoned("3")


def rw(revision, requests, errors=0, p95=1.0):
    return canary.RevisionWindow(revision, requests, errors, p95)


T = CanaryThresholds(min_requests=50, max_error_rate=0.01, max_latency_ratio=2.0, min_latency_increase_ms=5.0)


def test_errors_roll_back_early_without_waiting_for_the_window():
    verdict = canary.judge(rw("stable", 500), rw("canary", 25, errors=25), T, final=False)
    assert verdict.outcome == Outcome.ROLLBACK and "error rate 100.0%" in verdict.reason


def test_latency_rolls_back_only_when_both_ratio_and_margin_are_exceeded():
    slow = canary.judge(rw("stable", 500, p95=2.0), rw("canary", 60, p95=25.0), T, final=False)
    assert slow.outcome == Outcome.ROLLBACK and "p95 latency" in slow.reason and "end-to-end" in slow.reason
    # 3× slower but only 2 ms more: noise on a fast model, not a regression.
    assert canary.judge(rw("stable", 500, p95=1.0), rw("canary", 60, p95=3.0), T, final=True).outcome == Outcome.PROMOTE


def test_latency_compares_model_compute_when_both_revisions_report_it():
    # Shared queueing makes end-to-end look alike (13 vs 21 ms); the model itself is 10× slower.
    stable = canary.RevisionWindow("stable", 500, 0, 13.0, compute_p95_ms=0.3)
    slow = canary.RevisionWindow("canary", 60, 0, 21.0, compute_p95_ms=3.0)
    verdict = canary.judge(stable, slow, CanaryThresholds(min_requests=50, min_latency_increase_ms=1.0), final=False)
    assert verdict.outcome == Outcome.ROLLBACK and "model compute" in verdict.reason


def test_too_little_traffic_decides_nothing_until_the_limit_then_is_inconclusive():
    assert canary.judge(rw("stable", 500), rw("canary", 10), T, final=False) is None
    verdict = canary.judge(rw("stable", 500), rw("canary", 10), T, final=True)
    assert verdict.outcome == Outcome.INCONCLUSIVE and "only 10 canary requests" in verdict.reason


def test_a_healthy_canary_is_promoted_only_after_the_window():
    assert canary.judge(rw("stable", 500), rw("canary", 60), T, final=False) is None
    assert canary.judge(rw("stable", 500), rw("canary", 60), T, final=True).outcome == Outcome.PROMOTE


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def _traffic(per_tick_stable, per_tick_canary, canary_code="200"):
    """A snapshot source whose counters grow by the given amounts at every call."""
    state = {"n": 0}

    def snapshot():
        n = state["n"]
        state["n"] += 1
        return Snapshot(requests={("stable", "200", "1"): n * per_tick_stable, ("canary", canary_code, "2"): n * per_tick_canary},
                        buckets={"stable": {0.002: n * per_tick_stable, math.inf: n * per_tick_stable},
                                 "canary": {0.002: n * per_tick_canary, math.inf: n * per_tick_canary}})

    return snapshot


def test_analyze_polls_until_the_window_and_promotes():
    clock = FakeClock()
    t = CanaryThresholds(min_requests=20, window_seconds=2.0, max_window_seconds=10.0, poll_seconds=0.5)
    verdict = canary.analyze(_traffic(45, 5), t, clock=clock, sleep=clock.sleep)
    assert verdict.outcome == Outcome.PROMOTE and verdict.elapsed_s == pytest.approx(2.0)


def test_analyze_rolls_back_a_failing_canary_at_the_first_sufficient_evidence():
    clock = FakeClock()
    t = CanaryThresholds(min_requests=50, window_seconds=5.0, max_window_seconds=30.0, poll_seconds=0.25)
    verdict = canary.analyze(_traffic(45, 5, canary_code="500"), t, clock=clock, sleep=clock.sleep)
    assert verdict.outcome == Outcome.ROLLBACK and verdict.elapsed_s == pytest.approx(1.0)


def test_analyze_without_traffic_is_inconclusive_at_the_limit():
    clock = FakeClock()
    t = CanaryThresholds(min_requests=20, window_seconds=1.0, max_window_seconds=3.0, poll_seconds=0.5)
    verdict = canary.analyze(_traffic(0, 0), t, clock=clock, sleep=clock.sleep)
    assert verdict.outcome == Outcome.INCONCLUSIVE and verdict.elapsed_s == pytest.approx(3.0)


def test_watch_breaches_and_holds():
    clock = FakeClock()
    slo = SloThresholds(watch_seconds=2.0, min_requests=10, max_error_rate=0.01, max_p95_ms=250, poll_seconds=0.5)
    failing = canary.watch(lambda: _errors_only(clock), slo, clock=clock, sleep=clock.sleep)
    assert failing.outcome == Outcome.ROLLBACK and "breaches the SLO" in failing.reason
    clock = FakeClock()
    assert canary.watch(_traffic(20, 0), slo, clock=clock, sleep=clock.sleep).outcome == Outcome.PROMOTE


def _errors_only(clock):
    n = clock.now * 100
    return Snapshot(requests={("stable", "500", "1"): n}, buckets={"stable": {0.002: n, math.inf: n}})
