"""Release safety with real processes: a run killed mid-canary leaves no canary behind, two retrains of one model
never interleave, and a flood of malformed requests can neither fail a canary nor roll back a champion."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest
import requests

from mlops_platform.core.canary import Outcome
from mlops_platform.defs.release import guard_champion, release_canary
from tests.support import (
    Traffic,
    breast_cancer,
    dagster_execute,
    fast,
    register_copy_of_champion,
    registry,
    serve_model,
    serving,
    write_spec,
)

# Short windows, and a short lease margin, so a dead run's canary is reaped within seconds.
SPEC = fast(breast_cancer(), window_seconds=3.0, max_window_seconds=6.0, lease_margin_seconds=2.0, release_wait_seconds=120.0)
NAME = SPEC.registered_name
JOB = f"{SPEC.name}_train_and_deploy"
ROW = [0.5] * 30


@pytest.fixture(scope="module")
def champion(platform_home) -> str:
    serve_model(SPEC)
    return registry().version_for(NAME, "champion")


@pytest.fixture(scope="module")
def models_dir(platform_home):
    folder = platform_home / "models"
    write_spec(SPEC, folder)
    return folder


def routing() -> dict:
    """The endpoint's split (batching and capture left out: these tests are about which version serves)."""
    body = requests.get(f"{serving().base_url}/mlops/v1/endpoints/{NAME}/routing", timeout=5).json()
    body.pop("batching", None)
    body.pop("capture_rate", None)
    return body


def wait_for(condition, timeout: float, poll: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"condition not met within {timeout}s")


def test_a_run_killed_mid_canary_leaves_no_canary_and_consistent_aliases(champion, models_dir, platform_home):
    stable = registry().version_for(NAME, "champion")
    run = dagster_execute(JOB, models_dir, platform_home / "killed-run.log")
    try:
        during = wait_for(lambda: (r := routing()).get("canary") and r, timeout=180)
    finally:
        os.killpg(run.pid, signal.SIGKILL)  # the run, and anything it started in its group, dies at once
        run.wait()
    killed = time.time()
    candidate, deadline = during["canary"], during["lease"]["deadline"]
    assert during["lease"]["owner"] and deadline > killed

    wait_for(lambda: routing().get("canary") is None, timeout=deadline - killed + 5)
    assert time.time() <= deadline + 5
    assert routing() == {"stable": stable, "canary": None, "canary_percent": 0}
    client = registry().client()
    tags = client.get_model_version(NAME, candidate).tags
    assert tags["canary"] == "abandoned" and "ran out" in tags["canary_reason"]
    assert registry().version_for(NAME, "champion") == stable
    assert registry().version_for(NAME, "challenger") != candidate, "an abandoned canary still holds challenger"


def test_two_retrains_of_one_model_never_interleave(champion, models_dir, platform_home):
    seen: list[tuple[str, str | None]] = []
    stop = threading.Event()

    def watch():
        while not stop.is_set():
            try:
                r = routing()
                state = (r["stable"], r.get("canary"))
                if not seen or seen[-1] != state:
                    seen.append(state)
            except requests.RequestException:
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    runs = [dagster_execute(JOB, models_dir, platform_home / f"concurrent-{i}.log") for i in range(2)]
    try:
        codes = [run.wait(timeout=400) for run in runs]
    finally:
        stop.set()
        watcher.join()
    logs = [(platform_home / f"concurrent-{i}.log").read_text(errors="replace") for i in range(2)]
    assert codes == [0, 0], "\n".join(log[-3000:] for log in logs)
    canaries = [c for _, c in seen if c is not None]
    # Each canary runs to its end before another starts: the canary never jumps from one version to another.
    assert all(a is None or b is None or a == b for (_, a), (_, b) in zip(seen, seen[1:], strict=False)), seen
    assert len(set(canaries)) == 2, seen
    final = routing()
    assert final["canary"] is None and final["stable"] == registry().version_for(NAME, "champion")
    assert "lease" not in final


def test_malformed_requests_neither_fail_a_canary_nor_roll_back_a_champion(champion):
    backend, mlflow = serving(), registry()
    stable = mlflow.version_for(NAME, "champion")
    candidate = register_copy_of_champion(SPEC)
    mlflow.record_gate(NAME, candidate, True, "a copy of the champion")
    url = f"{backend.base_url}/v1/models/{NAME}:predict"
    rows = [ROW] * 8
    flood = [{"instances": [[1, 2, 3]]}, {"instances": [ROW, ROW[:5]]}, {"rows": [ROW]}, {"instances": [["x"] * 30]}]
    # This test is about what counts as an error; the two revisions' sub-millisecond compute times are left out of it
    # (a loaded 2-core machine can make them differ by 2×; the latency judgement has tests of its own).
    spec = SPEC.model_copy(update={"canary": SPEC.canary.model_copy(update={"min_latency_increase_ms": 25.0})})
    with Traffic(url, flood[0], rps=300, workers=6) as bad:
        release = release_canary(spec, mlflow, backend, stable, candidate, rows, owner="flood-test")
        assert release.verdict.outcome == Outcome.PROMOTE, release.verdict.reason
        mlflow.promote(NAME, candidate)
        backend.deploy(NAME, candidate)
        verdict, served = guard_champion(spec, mlflow, backend, candidate, stable, rows)
    assert verdict.outcome == Outcome.PROMOTE and served.version == candidate, verdict.reason
    statuses = {s for _, s in bad.results}
    assert statuses == {400} and len(bad.results) > 200
    for body in flood[1:]:
        assert requests.post(url, json=body, timeout=5).status_code == 400
