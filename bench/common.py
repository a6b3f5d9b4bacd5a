"""Shared pieces of the benchmarks: the wrk load tool and process CPU accounting; the platform set-up is the tests'
(`tests/support.py`)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests import support  # noqa: E402  (the benchmarks set up the platform exactly as the tests do)
from tests.support import free_port, platform_home  # noqa: E402

__all__ = ["free_port", "platform_home", "serve_model", "wrk", "wait_http", "cpu_seconds"]


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
    """Seed landing with the bundled data and run the model's end-to-end job: (spec, registry, serving backend), with
    its champion served."""
    spec = support.spec_named(model)
    support.serve_model(spec)
    return spec, support.registry(), support.serving()
