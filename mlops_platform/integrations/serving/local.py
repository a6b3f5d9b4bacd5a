"""The local serving backend: the platform's KServe runtime as one process on loopback, shared by every model,
started once and reused; routing changes go through the runtime's control API, metrics through its `/metrics`."""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

from mlops_platform.core.canary import CanaryLease
from mlops_platform.integrations.metrics import ServerMetrics
from mlops_platform.integrations.serving import (
    ROUTING_PREFIX,
    CanaryState,
    Endpoint,
    ReleaseBusy,
    ReleaseLock,
    ServingBackend,
    UnsupportedOperation,
)


class ServerProcess:
    """Starts, checks and stops the runtime, under a supervisor that restarts it when it dies.

    `STATE_DIR/server.json` names the supervisor by PID, start time and address; a process is signalled only when all
    of that matches a live process running our supervisor for this state folder, so a stale file never leads to
    signalling someone else's process. The control token that routing changes need is kept beside it, readable by
    this user only.
    """

    SUPERVISOR = "mlops_platform.serving.supervisor"

    def __init__(self, state_dir: str | Path, host: str, port: int, tracking_uri: str, registry_uri: str | None = None,
                 start_timeout_s: float = 90.0, grpc_port: int | None = None, capture_uri: str | None = None):
        self.state_dir = Path(state_dir)
        self.capture_uri = capture_uri
        self.host, self.port, self.grpc_port = host, port, grpc_port
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

    @property
    def token_file(self) -> Path:
        return self.state_dir / "control.token"

    def control_token(self) -> str:
        """The bearer token for the control API, created on first use with permissions for this user only."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return self.token_file.read_text().strip()
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_urlsafe(32))
        return self.token_file.read_text().strip()

    def live(self, timeout_s: float = 1.0) -> bool:
        try:
            return requests.get(f"{self.base_url}/v2/health/live", timeout=timeout_s).ok
        except requests.RequestException:
            return False

    def _state(self) -> dict:
        try:
            return json.loads(self.state_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def running_pid(self) -> int | None:
        """The supervisor this state folder started, if it is still alive and provably ours."""
        state = self._state()
        pid, started = state.get("pid"), state.get("create_time")
        if not isinstance(pid, int) or started is None:
            return None
        try:
            process = psutil.Process(pid)
            if process.status() == psutil.STATUS_ZOMBIE:
                _reap(pid)
                return None
            cmdline = process.cmdline()
            ours = (abs(process.create_time() - started) < 0.01 and self.SUPERVISOR in cmdline
                    and str(self.state_dir) in cmdline)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        return pid if ours else None

    def command(self) -> list[str]:
        server = ["--host", self.host, "--port", str(self.port), "--tracking-uri", self.tracking_uri,
                  "--routing-file", str(self.routing_file), "--control-token-file", str(self.token_file)]
        if self.registry_uri:
            server += ["--registry-uri", self.registry_uri]
        if self.grpc_port:
            server += ["--grpc-port", str(self.grpc_port)]
        if self.capture_uri:
            server += ["--capture-uri", self.capture_uri]
        return [sys.executable, "-m", self.SUPERVISOR, "--state-dir", str(self.state_dir), "--", *server]

    def ensure_running(self) -> int:
        """Start the server unless ours already runs at this address; idempotent. A server that is ours but slow to
        answer (busy, or coming back after a crash) is waited for, never restarted."""
        pid = self.running_pid()
        if pid is not None and (self._state().get("host"), self._state().get("port")) != (self.host, self.port):
            self.stop()
            pid = None
        started = None  # the process this call started, if any: its own exit status is the proof that it died
        if pid is None:
            self.control_token()
            with open(self.log_file, "ab") as log:
                # Its own session: it outlives the Dagster run that started it, and its process group is ours to stop.
                started = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                           start_new_session=True)
            pid = started.pid
            state = json.dumps({"pid": pid, "create_time": psutil.Process(pid).create_time(), "host": self.host,
                                "port": self.port})
            partial = self.state_file.with_suffix(".tmp")
            partial.write_text(state)
            partial.replace(self.state_file)  # whoever reads it sees the whole record or the previous one
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            code = started.poll() if started else (None if self.running_pid() is not None else "unknown")
            if code is not None:
                raise RuntimeError(f"model server supervisor exited ({code}):\n{self.log_tail()}")
            if self.live():
                return pid
            time.sleep(0.1)
        raise TimeoutError(f"model server did not answer within {self.start_timeout_s}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def stop(self) -> bool:
        """Stop the supervisor this state folder started, and the server with it; True if one was running. A state
        file that names any other process is removed and the process left alone."""
        pid = self.running_pid()
        if pid is None:
            self.state_file.unlink(missing_ok=True)
            return False
        os.killpg(pid, signal.SIGTERM)  # its group: start_new_session made it the leader, and it is provably ours
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and self.running_pid() is not None:
            _reap(pid)
            time.sleep(0.1)
        if self.running_pid() is not None:
            os.killpg(pid, signal.SIGKILL)
            _reap(pid)
        self.state_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect the exit status when the supervisor is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


@contextmanager
def replay_traffic(url: str, rows: list[list | dict], rps: float) -> Iterator[None]:
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


class FileReleaseLock(ReleaseLock):
    """The release lock as a small JSON file (holder and deadline); a `flock` on a guard file makes each
    check-and-take atomic across processes on this machine."""

    def __init__(self, path: Path, name: str):
        self.path, self.name = path, name
        self.guard = path.with_suffix(".guard")

    def _holder(self) -> dict:
        try:
            return json.loads(self.path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def _take(self, owner: str, ttl_s: float, renewing: bool) -> dict:
        """Take the lock (when free, expired or ours) or only extend it (when ours); returns whoever holds it now."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            holder = self._holder()
            mine = holder.get("owner") == owner
            free = not holder or holder.get("deadline", 0) <= time.time()
            if mine or (free and not renewing):
                holder = {"owner": owner, "deadline": time.time() + ttl_s}
                partial = self.path.with_suffix(".partial")
                partial.write_text(json.dumps(holder))
                partial.replace(self.path)
            return holder

    def _busy(self, holder: dict) -> ReleaseBusy:
        until = time.strftime("%H:%M:%S", time.localtime(holder.get("deadline", 0)))
        return ReleaseBusy(f"a release of {self.name} is in progress by {holder.get('owner', 'someone')} "
                           f"(its lock holds until {until} unless renewed); one release at a time per endpoint")

    def acquire(self, owner: str, ttl_s: float, wait_s: float = 0.0) -> None:
        deadline = time.monotonic() + wait_s
        while True:
            holder = self._take(owner, ttl_s, renewing=False)
            if holder.get("owner") == owner:
                return
            if time.monotonic() >= deadline:
                raise self._busy(holder)
            time.sleep(0.2)

    def renew(self, owner: str, ttl_s: float) -> None:
        holder = self._take(owner, ttl_s, renewing=True)
        if holder.get("owner") != owner:
            raise ReleaseBusy(f"{owner} no longer holds the release lock of {self.name}: {self._busy(holder)}")

    def release(self, owner: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.guard, "a") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)
            if self._holder().get("owner") == owner:
                self.path.unlink(missing_ok=True)


class LocalServing(ServingBackend):
    """Every model behind one runtime process on loopback; routing swaps in place, with no restart."""

    def __init__(self, process: ServerProcess):
        self.process = process
        self.metrics = ServerMetrics(process.base_url)

    @property
    def base_url(self) -> str:
        return self.process.base_url

    def canary_state(self, name: str) -> CanaryState | None:
        response = requests.get(f"{self.base_url}{ROUTING_PREFIX}/{name}/routing", timeout=10)
        if response.status_code == 404:
            return None
        response.raise_for_status()
        body = response.json()
        lease = CanaryLease(**body["lease"]) if body.get("lease") else None
        return CanaryState(body["stable"], body.get("canary"), lease)

    def release_lock(self, name: str) -> ReleaseLock:
        return FileReleaseLock(self.process.state_dir / "locks" / f"{name}.json", name)

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0, *,
                    lease: CanaryLease | None = None, force: bool = False, batching: dict | None = None,
                    capture_rate: float | None = None) -> None:
        self.process.ensure_running()
        body = {"stable": stable, "canary": canary, "canary_percent": canary_percent, "force": force}
        if batching is not None:
            body["batching"] = batching
        if capture_rate is not None:
            body["capture_rate"] = capture_rate
        if lease is not None:
            body["lease"] = {"owner": lease.owner, "seconds": max(lease.deadline - time.time(), 0.001)}
        response = requests.put(f"{self.base_url}{ROUTING_PREFIX}/{name}/routing", json=body, timeout=120,
                                headers={"Authorization": f"Bearer {self.process.control_token()}"})
        if not response.ok:
            raise RuntimeError(f"model server refused routing {body} for {name}: {response.status_code} {response.text}")

    def _served_versions(self, name: str) -> list[str]:
        response = requests.get(f"{self.base_url}/v2/models/{name}", timeout=10)
        if response.status_code == 404:
            return []
        response.raise_for_status()
        return response.json().get("versions", [])

    def deploy(self, name: str, version: str, *, force: bool = False, batching: dict | None = None,
               capture_rate: float | None = None) -> Endpoint:
        """Serve `version` alone; the server swaps it in place, no restart, and reports what it serves."""
        self.set_routing(name, version, force=force, batching=batching, capture_rate=capture_rate)
        served = self._served_versions(name)
        if served != [version]:
            raise RuntimeError(f"model server serves {name} versions {served}, expected [{version!r}]")
        return Endpoint(name=name, version=version, base_url=self.base_url)

    def publish_monitoring(self, name: str, version: str, feature_drift: dict[str, float],
                           live_quality: dict[str, float]) -> None:
        if not self.process.live():
            raise UnsupportedOperation(f"no local model server answers at {self.base_url}")
        response = requests.put(f"{self.base_url}{ROUTING_PREFIX}/{name}/monitoring", timeout=10,
                                json={"version": version, "feature_drift": feature_drift, "live_quality": live_quality},
                                headers={"Authorization": f"Bearer {self.process.control_token()}"})
        response.raise_for_status()

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
    def replay(self, name: str, rows: list[list | dict], rps: float) -> Iterator[None]:
        with replay_traffic(f"{self.base_url}/v1/models/{name}:predict", rows, rps):
            yield
