"""Monitoring through real processes: every answer carries a request id, sampled requests are captured without
slowing serving down (on and off at 16 concurrent clients, in one run), feedback needs the control token and joins
labels to requests in the drift report, and a broken capture sink costs no request."""

from __future__ import annotations

import statistics
import threading
import time
import uuid

import dagster as dg
import requests

from mlops_platform.core import data
from mlops_platform.definitions import build_definitions
from mlops_platform.defs.monitoring import drift_key
from mlops_platform.integrations.serving import ROUTING_PREFIX
from tests.support import breast_cancer, fast, registry, serve_model, serving

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name


def rows(n: int = 4) -> tuple[list[list[float]], list[int]]:
    frame = data.bundled_batches(SPEC.dataset, 1)[0].head(n)
    return frame[SPEC.dataset.feature_names].to_numpy(dtype=float).tolist(), frame[SPEC.dataset.target].tolist()


def set_capture(rate: float) -> None:
    backend = serving()
    version = registry().version_for(NAME, "champion")
    backend.set_routing(NAME, version, capture_rate=rate)


def latencies(clients: int = 16, per_client: int = 60) -> list[float]:
    body = {"instances": rows(1)[0]}
    url = f"{serving().base_url}/v1/models/{NAME}:predict"
    out: list[float] = []

    def client():
        session = requests.Session()
        for _ in range(per_client):
            started = time.perf_counter()
            assert session.post(url, json=body, timeout=10).status_code == 200
            out.append(time.perf_counter() - started)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return out


def metric(name: str, **labels) -> float:
    text = requests.get(f"{serving().base_url}/metrics", timeout=5).text
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    line = next((row for row in text.splitlines() if row.startswith(f"{name}{{") and all(w in row for w in wanted)), None)
    return float(line.rsplit(" ", 1)[1]) if line else 0.0


def wait_for(condition, timeout: float = 20.0) -> None:
    """The writer flushes every 2 s, off the request path; a loaded machine may take longer."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the capture writer did not get there in time"
        time.sleep(0.25)


def test_capture_feedback_and_the_drift_report(platform_home):
    serve_model(SPEC)
    base = serving().base_url

    # Every answer carries a request id: the client's own, or a new one.
    v1 = requests.post(f"{base}/v1/models/{NAME}:predict", json={"instances": rows(2)[0]},
                       headers={"X-Request-Id": "client-42"}, timeout=10)
    assert v1.headers["x-request-id"] == "client-42"
    fresh = requests.post(f"{base}/v1/models/{NAME}:predict", json={"instances": rows(1)[0]}, timeout=10)
    assert len(fresh.headers["x-request-id"]) == 32
    v2 = requests.post(f"{base}/v2/models/{NAME}/infer", timeout=10, json={"inputs": [
        {"name": "input-0", "datatype": "FP64", "shape": [1, 30], "data": rows(1)[0][0]}]})
    assert v2.json()["id"] == v2.headers["x-request-id"]

    # Capture on and off at c=16 in the same run: capture is a queue append, so latency must not move much.
    set_capture(0.0)
    latencies(per_client=10)  # warm
    off = latencies()
    set_capture(1.0)
    on = latencies()
    ratio = statistics.median(on) / statistics.median(off)
    assert ratio < 1.5, f"median latency with capture {statistics.median(on) * 1e3:.2f} ms vs {statistics.median(off) * 1e3:.2f} ms"

    # Ground truth, by request id, through the authenticated feedback route.
    sent = []
    for i in range(150):
        features, truth = rows(1 + i % 3)
        request_id = f"req-{uuid.uuid4().hex[:12]}"
        assert requests.post(f"{base}/v1/models/{NAME}:predict", json={"instances": features},
                             headers={"X-Request-Id": request_id}, timeout=10).ok
        sent += [{"request_id": request_id, "row": r, "label": label} for r, label in enumerate(truth)]
    url = f"{base}{ROUTING_PREFIX}/{NAME}/feedback"
    assert requests.post(url, json={"labels": sent}, timeout=10).status_code == 401
    token = serving().process.control_token()
    answer = requests.post(url, json={"labels": sent}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert answer.status_code == 202 and answer.json() == {"accepted": len(sent)}
    bad = requests.post(url, json={"labels": [{"label": 1}]}, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert bad.status_code == 400
    wait_for(lambda: metric("mlops_capture_written_rows_total", model=NAME, kind="feedback") == len(sent))

    defs = build_definitions(specs=[SPEC])
    result = defs.resolve_job_def(f"{SPEC.name}_monitor").execute_in_process(instance=dg.DagsterInstance.get())
    meta = {k: getattr(v, "value", v) for k, v in result.get_asset_materialization_events()[0]
            .event_specific_data.materialization.metadata.items()}
    assert meta["labelled_rows"] == len(sent), "every label joined its captured prediction"
    assert meta["captured_rows"] > 16 * 60 and meta["enough_rows"]
    assert meta["live_quality"]["accuracy"] > 0.9
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    # The traffic was the same few rows over and over: nothing like the training data, and the report says so.
    assert not checks["feature_drift"].passed and checks["feature_drift"].severity == dg.AssetCheckSeverity.WARN
    assert checks["live_quality"].passed, "no floor declared: live quality is reported, never failed"
    assert metric("mlops_live_quality", model=NAME, metric="accuracy") > 0.9
    assert metric("mlops_feature_drift", model=NAME, feature="mean_radius") > 0.2
    train_job = defs.resolve_job_def(f"{SPEC.name}_train_and_deploy")
    assert drift_key(SPEC) not in train_job.asset_layer.executable_asset_keys, "drift runs on its own schedule"


def test_a_broken_capture_sink_costs_no_request(platform_home):
    import shutil

    serve_model(SPEC)
    serving().stop()
    blocker = platform_home / "capture"
    shutil.rmtree(blocker, ignore_errors=True)
    blocker.write_text("a file where the capture folder should be: every write fails")
    try:
        set_capture(1.0)  # starts the server again, capturing into the broken location
        statuses = [requests.post(f"{serving().base_url}/v1/models/{NAME}:predict", json={"instances": rows(2)[0]},
                                  timeout=10).status_code for _ in range(50)]
        assert statuses == [200] * 50
        wait_for(lambda: metric("mlops_capture_dropped_rows_total", model=NAME, reason="write_failed") == 100)
    finally:  # the module's other test captures into this home: give it a working sink back
        serving().stop()
        blocker.unlink()
