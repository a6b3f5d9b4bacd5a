"""The local model server under faults, with real processes: kill -9 under load, a busy server during a deploy, a
stale PID file naming someone else's process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest
import requests

from tests.support import Traffic, breast_cancer, fast, registry, serve_model, serving

SPEC = fast(breast_cancer())
NAME = SPEC.registered_name
ROW = [0.5] * 30


@pytest.fixture(scope="module")
def champion(platform_home) -> str:
    serve_model(SPEC)
    return registry().version_for(NAME, "champion")


def server_child() -> dict:
    return json.loads((serving().process.state_dir / "server.child.json").read_text())


def routing() -> dict:
    """The endpoint's split (its batching settings left out: these tests are about which version serves)."""
    body = requests.get(f"{serving().base_url}/mlops/v1/endpoints/{NAME}/routing", timeout=5).json()
    body.pop("batching", None)
    return body


def test_killed_server_serves_again_within_seconds_with_the_same_routing(champion):
    backend = serving()
    before, supervisor = routing(), backend.process.running_pid()
    child = server_child()
    url = f"{backend.base_url}/v1/models/{NAME}:predict"
    with Traffic(url, {"instances": [ROW]}, rps=100) as traffic:
        time.sleep(1.0)
        os.kill(child["pid"], signal.SIGKILL)
        killed = time.monotonic()
        deadline = killed + 10
        while time.monotonic() < deadline and not any(t > killed and s == 200 for t, s in traffic.results):
            time.sleep(0.05)
        time.sleep(0.5)
    back = min(t for t, s in traffic.results if t > killed and s == 200)
    assert back - killed <= 5.0, f"serving again only after {back - killed:.2f}s"
    assert all(s in (0, 200) for _, s in traffic.results), "only refused connections while it was down, never an error"
    assert routing() == before
    assert backend.process.running_pid() == supervisor, "the supervisor itself never restarts"
    assert server_child()["starts"] == child["starts"] + 1
    assert "restarting in" in backend.process.log_tail(200)


def test_a_busy_server_is_waited_for_never_restarted(champion):
    backend = serving()
    child, supervisor = server_child(), backend.process.running_pid()
    big = {"instances": [ROW] * 2_000}  # the largest request the server takes, sent back to back from 3 clients
    done: list[int] = []

    import threading

    def heavy():
        session = requests.Session()
        for _ in range(15):
            done.append(session.post(f"{backend.base_url}/v1/models/{NAME}:predict", json=big, timeout=120).status_code)

    workers = [threading.Thread(target=heavy) for _ in range(3)]
    for worker in workers:
        worker.start()
    time.sleep(0.3)
    health = []
    while any(w.is_alive() for w in workers):
        started = time.perf_counter()
        assert requests.get(f"{backend.base_url}/v2/health/live", timeout=5).ok
        health.append(time.perf_counter() - started)
        backend.deploy(NAME, champion)  # what every release does: ensure_running, then a routing change
        time.sleep(0.05)
    for worker in workers:
        worker.join()
    assert done == [200] * 45
    assert len(health) >= 3
    assert server_child() == child and backend.process.running_pid() == supervisor


def test_a_stale_pid_file_naming_another_process_is_left_alone(champion, tmp_path):
    from mlops_platform.integrations.serving.local import ServerProcess

    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        import psutil

        state = tmp_path / "serving"
        state.mkdir()
        # Everything a PID file holds, pointing at a process that is not our server.
        (state / "server.json").write_text(json.dumps({"pid": stranger.pid, "host": "127.0.0.1", "port": 1,
                                                       "create_time": psutil.Process(stranger.pid).create_time()}))
        process = ServerProcess(state, "127.0.0.1", 1, registry().tracking_uri)
        assert process.running_pid() is None
        assert process.stop() is False
        assert stranger.poll() is None, "the stranger was signalled"
        assert not (state / "server.json").exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_cli_stop_stops_the_supervisor_and_the_server(champion):
    import sys

    from tests.support import REPO

    backend = serving()
    supervisor, child = backend.process.running_pid(), server_child()["pid"]
    result = subprocess.run([sys.executable, "-m", "mlops_platform.cli", "stop"], cwd=REPO, capture_output=True,
                            text=True, timeout=60)
    assert "stopped the model server" in result.stdout, result.stderr
    import psutil

    for pid in (supervisor, child):
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{backend.base_url}/v2/health/live", timeout=2)
    backend.process.ensure_running()  # leave it serving for whatever runs next
