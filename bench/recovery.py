"""Recovery benchmark: how fast the local platform heals from the two faults that used to leave it broken.

  server_kill - 100 req/s of one-row V1 traffic; the model server is killed with SIGKILL; time to the first 200
                after the kill, and the requests refused in that gap (target: serving again within 5 s);
  run_kill    - a `dagster job execute` retrain is killed with SIGKILL while its canary is being judged; time from the
                kill to the canary gone from the routing, against the canary's lease (target: within lease + 5 s).
Runs in a throw-away platform home with a real KServe server on loopback. Ends with one JSON line of figures.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import platform_home
from tests import support

ROW = [0.5] * 30


def routing(name: str) -> dict:
    import requests

    return requests.get(f"{support.serving().base_url}/mlops/v1/endpoints/{name}/routing", timeout=5).json()


def server_kill(name: str, repeats: int) -> dict:
    backend = support.serving()
    url = f"{backend.base_url}/v1/models/{name}:predict"
    gaps, refused = [], []
    for _ in range(repeats):
        child = json.loads((backend.process.state_dir / "server.child.json").read_text())["pid"]
        with support.Traffic(url, {"instances": [ROW]}, rps=100) as traffic:
            time.sleep(1.0)
            os.kill(child, signal.SIGKILL)
            killed = time.monotonic()
            while time.monotonic() < killed + 30 and not any(t > killed and s == 200 for t, s in traffic.results):
                time.sleep(0.02)
        back = min(t for t, s in traffic.results if t > killed and s == 200)
        gaps.append(round(back - killed, 3))
        refused.append(sum(1 for t, s in traffic.results if killed <= t <= back and s != 200))
    return {"seconds_kill_to_first_200": gaps, "refused_requests": refused, "target_s": 5.0,
            "meets_target": max(gaps) <= 5.0}


def run_kill(spec, home: Path) -> dict:
    models = home / "models"
    support.write_spec(spec, models)
    run = support.dagster_execute(f"{spec.name}_train_and_deploy", models, home / "run.log")
    deadline = time.monotonic() + 300
    during = {}
    while time.monotonic() < deadline and not during.get("canary"):
        during = routing(spec.registered_name)
        time.sleep(0.05)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    killed = time.time()
    lease_left = during["lease"]["deadline"] - killed
    while routing(spec.registered_name).get("canary") is not None and time.time() < killed + lease_left + 60:
        time.sleep(0.05)
    removed = time.time() - killed
    return {"lease_s": round(spec.canary.max_window_seconds + spec.canary.lease_margin_seconds, 3),
            "lease_left_at_kill_s": round(lease_left, 3), "seconds_kill_to_canary_removed": round(removed, 3),
            "target_s": round(lease_left + 5, 3), "meets_target": removed <= lease_left + 5}


def main() -> None:
    spec = support.fast(support.breast_cancer(), window_seconds=3.0, max_window_seconds=6.0, lease_margin_seconds=2.0)
    with platform_home() as home:
        support.serve_model(spec)
        killed_server = server_kill(spec.registered_name, repeats=3)
        killed_run = run_kill(spec, home)
    print(json.dumps({"benchmark": "recovery", "machine": f"{os.cpu_count()} cpu", "server_kill": killed_server,
                      "run_kill": killed_run,
                      "meets_targets": killed_server["meets_target"] and killed_run["meets_target"]}))


if __name__ == "__main__":
    main()
