"""Shared pieces of the benchmarks: a throw-away platform home, the wrk load tool, process CPU accounting."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def platform_home():
    """MLOPS_HOME, DAGSTER_HOME and a free serving port in a temp folder; the model server is stopped at the end."""
    home = Path(tempfile.mkdtemp(prefix="mlops-bench-"))
    (home / "dagster_home").mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    os.environ.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"),
                      MLOPS_SERVING_PORT=str(free_port()), MLOPS_PROFILE="local")
    from mlops_platform.defs.profiles import load_profile

    try:
        yield home
    finally:
        load_profile().resources["serving"].stop()
        shutil.rmtree(home, ignore_errors=True)


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            total += times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return total


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"unexpected wrk latency {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def wrk(url: str, body: dict, connections: int, seconds: float, server_pid: int) -> dict:
    """POST `body` with wrk for `seconds`; req/s, p50/p99 and the server's CPU time per request."""
    workdir = Path(tempfile.mkdtemp(prefix="wrk-"))
    (workdir / "body.json").write_text(json.dumps(body))
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f'local f = io.open("{workdir / "body.json"}", "r"); wrk.body = f:read("*a"); f:close()\n'
    )
    base = ["wrk", "-t1", f"-c{connections}", "-s", str(script), "--latency"]
    subprocess.run([*base, "-d1s", url], check=True, capture_output=True)  # warm-up
    cpu_before = cpu_seconds(server_pid)
    out = subprocess.run([*base, f"-d{max(1, round(seconds))}s", url], check=True, capture_output=True, text=True).stdout
    cpu = cpu_seconds(server_pid) - cpu_before
    shutil.rmtree(workdir, ignore_errors=True)
    if "Latency Distribution" not in out:
        raise RuntimeError(f"wrk printed no latency distribution:\n{out}")
    requests_done = int(re.search(r"(\d+) requests in", out).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {
        "req_per_s": round(float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)), 1),
        "p50_ms": round(_ms(re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)), 3),
        "p99_ms": round(_ms(re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)), 3),
        "server_cpu_us_per_req": round(cpu / max(requests_done, 1) * 1e6, 1),
        "requests": requests_done,
        "non_2xx": int(errors.group(1)) if errors else 0,
    }


def wait_http(url: str, timeout: float = 90.0) -> None:
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=1).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def serve_model(model: str):
    """Seed landing with the bundled data and run the model's end-to-end job: (spec, resources) with its champion served."""
    import dagster as dg

    from mlops_platform.cli import main as cli
    from mlops_platform.core.spec import load_specs
    from mlops_platform.definitions import build_definitions
    from mlops_platform.defs.model_assets import job_name
    from mlops_platform.defs.profiles import load_profile

    cli(["seed", "--model", model])
    spec = next(s for s in load_specs() if s.name == model)
    with dg.DagsterInstance.get() as instance:
        build_definitions(specs=[spec]).resolve_job_def(job_name(spec)).execute_in_process(instance=instance)
    return spec, load_profile().resources
