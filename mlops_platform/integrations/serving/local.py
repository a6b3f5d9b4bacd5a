"""The local serving backend: the platform's KServe runtime as one process on loopback, shared by every model,
started once and reused; routing changes go through the runtime's control API, metrics through its `/metrics`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import requests

from mlops_platform.integrations.metrics import ServerMetrics
from mlops_platform.integrations.serving import ROUTING_PREFIX, Endpoint, ServingBackend


class ServerProcess:
    """Starts, checks and stops the runtime process; its PID and address are kept in `STATE_DIR/server.json`."""

    def __init__(self, state_dir: str | Path, host: str, port: int, tracking_uri: str, registry_uri: str | None = None,
                 start_timeout_s: float = 90.0):
        self.state_dir = Path(state_dir)
        self.host, self.port = host, port
        self.tracking_uri, self.registry_uri = tracking_uri, registry_uri
        self.start_timeout_s = start_timeout_s

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def state_file(self) -> Path:
        return self.state_dir / "server.json"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def routing_file(self) -> Path:
        return self.state_dir / "routing.json"

    def live(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/v2/health/live", timeout=1).ok
        except requests.RequestException:
            return False

    def running_pid(self) -> int | None:
        """The PID of the server this state folder started, if it is still alive."""
        try:
            pid = json.loads(self.state_file.read_text())["pid"]
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ProcessLookupError, KeyError, ValueError, PermissionError):
            return None

    def command(self) -> list[str]:
        command = [sys.executable, "-m", "mlops_platform.serving", "--host", self.host, "--port", str(self.port),
                   "--tracking-uri", self.tracking_uri, "--routing-file", str(self.routing_file)]
        if self.registry_uri:
            command += ["--registry-uri", self.registry_uri]
        return command

    def ensure_running(self) -> int:
        """Start the server unless ours already answers on the port; idempotent."""
        pid = self.running_pid()
        if pid is not None:
            state = json.loads(self.state_file.read_text())
            if (state.get("host"), state.get("port")) == (self.host, self.port) and self.live():
                return pid
            self.stop()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # outlives the Dagster run that started it
        self.state_file.write_text(json.dumps({"pid": process.pid, "host": self.host, "port": self.port}))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"model server exited with {process.returncode}:\n{self.log_tail()}")
            if self.live():
                return process.pid
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"model server did not answer within {self.start_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> bool:
        """Stop the server this state folder started; True if one was running."""
        pid = self.running_pid()
        if pid is None:
            return False
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            _reap(pid)
            time.sleep(0.1)
        else:
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        self.state_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextmanager
def replay_traffic(url: str, rows: list[list[float]], rps: float) -> Iterator[None]:
    """Rows sent one per V1 request to `url` at about `rps`, from background threads, until the block ends."""
    stop = threading.Event()
    workers = max(1, min(8, int(rps // 50) + 1))
    interval = workers / rps

    def send(offset: int) -> None:
        session = requests.Session()
        i, next_at = offset, time.monotonic()
        while not stop.is_set():
            try:
                session.post(url, json={"instances": [rows[i % len(rows)]]}, timeout=10)
            except requests.RequestException:
                pass  # a refused request is the server's problem to report, not the replayer's
            i += workers
            next_at += interval
            stop.wait(max(0.0, next_at - time.monotonic()))

    threads = [threading.Thread(target=send, args=(k,), daemon=True) for k in range(workers)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=15)


class LocalServing(ServingBackend):
    """Every model behind one runtime process on loopback; routing swaps in place, with no restart."""

    def __init__(self, process: ServerProcess):
        self.process = process
        self.metrics = ServerMetrics(process.base_url)

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def _put_routing(self, name: str, body: dict) -> dict:
        response = requests.put(f"{self.base_url}{ROUTING_PREFIX}/{name}/routing", json=body, timeout=120)
        if not response.ok:
            raise RuntimeError(f"model server refused routing {body} for {name}: {response.status_code} {response.text}")
        return response.json()

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0) -> None:
        self.process.ensure_running()
        self._put_routing(name, {"stable": stable, "canary": canary, "canary_percent": canary_percent})

    def _served_versions(self, name: str) -> list[str]:
        response = requests.get(f"{self.base_url}/v2/models/{name}", timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return response.json().get("versions", [])

    def deploy(self, name: str, version: str) -> Endpoint:
        """Serve `version` alone; the server swaps it in place, no restart, and reports what it serves."""
        self.set_routing(name, version)
        served = self._served_versions(name)
        if served != [version]:
            raise RuntimeError(f"model server serves {name} versions {served}, expected [{version!r}]")
        return Endpoint(name=name, version=version, base_url=self.base_url)

    def endpoint(self, name: str) -> Endpoint:
        if not self.process.live():
            raise RuntimeError(f"no local model server answers at {self.base_url}; `make run` starts one")
        served = self._served_versions(name)
        if not served:
            raise RuntimeError(f"the local model server at {self.base_url} serves no endpoint named {name!r}")
        return Endpoint(name=name, version=served[0], base_url=self.base_url)

    def stop(self) -> bool:
        return self.process.stop()

    @contextmanager
    def replay(self, name: str, rows: list[list[float]], rps: float) -> Iterator[None]:
        with replay_traffic(f"{self.base_url}/v1/models/{name}:predict", rows, rps):
            yield
