"""Progressive delivery on a real KServe server: promotion, rollback on errors and latency, no decision without
traffic, the split surviving a restart and changing under load, and the guard after promotion."""

from __future__ import annotations

import threading
import time

import pytest
import requests

from mlops_platform.core import data
from mlops_platform.core.canary import Outcome, Revision, window
from mlops_platform.core.spec import EstimatorSpec, GateSpec, StepSpec
from mlops_platform.defs.release import guard_champion, release_canary
from tests import support
from tests.support import breast_cancer, check_results, fast, materialized, registry, run_job, seed, serving

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name
SLOW_FOREST = EstimatorSpec(steps=[StepSpec(**{"class": "sklearn.ensemble.RandomForestClassifier",
                                               "params": {"n_estimators": 600, "random_state": 0}})])


@pytest.fixture(scope="module")
def champion(platform_home) -> str:
    seed(SPEC)
    result = run_job(SPEC)
    assert result.success
    return materialized(result)["champion"]["model_version"]


def mlflow_client():
    return registry().client()


def current_champion() -> str:
    return registry().version_for(NAME, "champion")


def routing() -> dict:
    """The endpoint's split (batching and capture left out: these tests are about which version serves)."""
    body = requests.get(f"{serving().base_url}/mlops/v1/endpoints/{NAME}/routing", timeout=5).json()
    body.pop("batching", None)
    body.pop("capture_rate", None)
    return body


def rows(n: int = 64) -> list[list[float]]:
    frame = data.bundled_batches(SPEC.dataset, 1)[0].head(n)
    return frame[SPEC.dataset.feature_names].to_numpy(dtype=float).tolist()


def register_broken_version() -> str:
    return support.register_broken_version(SPEC)


def register_copy_of_champion() -> str:
    return support.register_copy_of_champion(SPEC)


def test_healthy_challenger_is_promoted_through_the_canary(champion):
    result = run_job(SPEC)
    assert result.success
    release = materialized(result)["canary"]
    assert release["outcome"] == Outcome.PROMOTE
    new = materialized(result)["champion"]["model_version"]
    assert current_champion() == new != champion
    assert routing() == {"stable": new, "canary": None, "canary_percent": 0}
    assert mlflow_client().get_model_version(NAME, new).tags["canary"] == "passed"
    snapshot = serving().snapshot(NAME)
    served = sum(n for (rev, code, version), n in snapshot.requests.items() if (rev, code, version) == ("canary", "200", new))
    assert served >= SPEC.canary.min_requests


def test_slow_challenger_is_rolled_back_on_latency(champion):
    before = current_champion()
    slow = SPEC.model_copy(update={"estimator": SLOW_FOREST, "gate": GateSpec(metric="f1", min_value=0.8, max_regression=0.2),
                                   "slo": SPEC.slo.model_copy(update={"max_p95_ms": 20.0})})
    result = run_job(slow)
    assert not result.success
    check = check_results(result)["canary_analysis"]
    assert not check.passed and "canary p95 latency" in check.description
    rejected = materialized(result)["canary"]["canary_version"]
    assert current_champion() == before
    assert routing() == {"stable": before, "canary": None, "canary_percent": 0}
    tags = mlflow_client().get_model_version(NAME, rejected).tags
    assert tags["canary"] == "rejected" and "p95 latency" in tags["canary_reason"]
    assert {"champion", "endpoint"}.isdisjoint(materialized(result))


def test_failing_challenger_is_rolled_back_on_errors_within_seconds(champion):
    stable = current_champion()
    broken = register_broken_version()
    registry().record_gate(NAME, broken, True, "passes offline, fails every request online")
    release = release_canary(SPEC, registry(), serving(), stable, broken, rows())
    assert release.verdict.outcome == Outcome.ROLLBACK and "error rate" in release.verdict.reason
    assert release.seconds_to_decision < 10
    assert routing() == {"stable": stable, "canary": None, "canary_percent": 0}
    assert mlflow_client().get_model_version(NAME, broken).tags["canary"] == "rejected"
    assert current_champion() == stable


def test_too_little_traffic_gives_no_decision_and_no_promotion(champion):
    stable = current_champion()
    starved = SPEC.model_copy(update={"canary": SPEC.canary.model_copy(update={"min_requests": 10_000, "max_window_seconds": 2.0})})
    candidate = register_copy_of_champion()  # healthy: only the lack of traffic may stop it
    registry().record_gate(NAME, candidate, True, "a copy of the champion")
    release = release_canary(starved, registry(), serving(), stable, candidate, rows())
    assert release.verdict.outcome == Outcome.INCONCLUSIVE and "fewer than the 10000 needed" in release.verdict.reason
    assert routing()["canary"] is None and current_champion() == stable


def test_split_survives_a_server_restart_and_is_exact(champion):
    backend = serving()
    stable = current_champion()
    other = register_copy_of_champion()
    backend.set_routing(NAME, stable, other, 25, force=True)
    assert backend.stop()
    backend.process.ensure_running()
    assert routing() == {"stable": stable, "canary": other, "canary_percent": 25}
    before = backend.snapshot(NAME)
    session = requests.Session()
    for row in rows(100):
        assert session.post(f"{backend.base_url}/v1/models/{NAME}:predict", json={"instances": [row]}, timeout=10).ok
    after = backend.snapshot(NAME)
    assert window(before, after, Revision.CANARY).requests == 25
    assert window(before, after, Revision.STABLE).requests == 75
    backend.set_routing(NAME, stable)


def test_split_changes_at_run_time_without_restart_or_dropped_requests(champion):
    backend = serving()
    stable = current_champion()
    other = register_copy_of_champion()
    pid = backend.process.running_pid()
    statuses, stop = [], threading.Event()

    def client():
        session = requests.Session()
        body = {"instances": rows(1)}
        while not stop.is_set():
            statuses.append(session.post(f"{backend.base_url}/v1/models/{NAME}:predict", json=body, timeout=10).status_code)

    workers = [threading.Thread(target=client) for _ in range(4)]
    for w in workers:
        w.start()
    try:
        changes = []
        for percent in (10, 50, 0, 30, 0):
            started = time.perf_counter()
            backend.set_routing(NAME, stable, other if percent else None, percent, force=True)
            changes.append(time.perf_counter() - started)
            time.sleep(0.3)
    finally:
        stop.set()
        for w in workers:
            w.join()
    assert max(changes) < 1.0, changes
    assert len(statuses) > 100 and set(statuses) == {200}
    assert backend.process.running_pid() == pid


def test_guard_rolls_back_a_promoted_champion_that_breaches_its_slo(champion):
    mlflow, backend = registry(), serving()
    before = current_champion()
    broken = register_broken_version()
    # What the champion asset does after a passed canary: the alias moves and the version takes all traffic.
    assert mlflow.promote(NAME, broken) == before
    backend.deploy(NAME, broken, force=True)

    verdict, served = guard_champion(SPEC, mlflow, backend, broken, before, rows())

    assert verdict.outcome == Outcome.ROLLBACK and "breaches the SLO" in verdict.reason
    assert verdict.elapsed_s < SPEC.slo.watch_seconds + 1
    assert served.version == before and current_champion() == before
    assert routing() == {"stable": before, "canary": None, "canary_percent": 0}
    tags = mlflow_client().get_model_version(NAME, broken).tags
    assert "breaches the SLO" in tags["rolled_back"]
    assert "superseded_by" not in mlflow_client().get_model_version(NAME, before).tags


def test_kserve_repository_extension_reloads_the_current_champion(champion):
    backend = serving()
    stable = current_champion()
    backend.set_routing(NAME, register_broken_version(), force=True)  # not the champion, as after a manual override
    auth = {"Authorization": f"Bearer {backend.process.control_token()}"}
    response = requests.post(f"{backend.base_url}/v2/repository/models/{NAME}/load", headers=auth, timeout=60)
    assert response.status_code == 200 and response.json() == {"name": NAME, "load": True}
    assert routing() == {"stable": stable, "canary": None, "canary_percent": 0}
    missing = requests.post(f"{backend.base_url}/v2/repository/models/no-such-model/load", headers=auth, timeout=60)
    # A model the registry does not know is not found (404), naming the model; KServe itself would say 503.
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]
