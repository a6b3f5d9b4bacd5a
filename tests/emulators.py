"""Real object-storage servers on loopback, for the tests that prove the cloud paths: moto's S3 server, a GCS
emulator and Azurite (Azure Blob), each started as its own process on a free port and stopped by its PID.

Clients reach them the way they reach the clouds, through the environment: `AWS_ENDPOINT_URL` and the AWS key
variables for S3, `STORAGE_EMULATOR_HOST` for GCS, `AZURE_STORAGE_CONNECTION_STRING` for Azure. Nothing in the
platform's code knows it is talking to an emulator.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import requests

from tests.support import free_port


class EmulatorUnavailable(RuntimeError):
    """The server could not start: which one, and why."""


@dataclass
class Emulator:
    name: str
    url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)


def _log_tail(log: Path, lines: int = 5) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return ""


def _ensure_free(name: str, port: int) -> None:
    """A server already on the port would answer the readiness probe in the emulator's place: refuse, and say so."""
    with socket.socket() as probe:
        # As servers bind: connections of a server stopped a moment ago (TIME_WAIT) do not hold the port, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise EmulatorUnavailable(f"{name}: port {port} on 127.0.0.1 is taken ({exc.strerror})") from None


def start_server(name: str, command: list[str], ready_url: str, log: Path, timeout: float = 30.0,
                 env: dict[str, str] | None = None) -> subprocess.Popen:
    """A server process in its own session, once `ready_url` answers; a clear EmulatorUnavailable otherwise."""
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise EmulatorUnavailable(f"{name}: {command[0]} is not installed (make install puts it in .venv)")
    _ensure_free(name, urlparse(ready_url).port)
    with open(log, "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmulatorUnavailable(f"{name} exited with {process.returncode} at start; the end of {log}:\n"
                                      f"{_log_tail(log)}")
        try:
            requests.get(ready_url, timeout=1)
            return process
        except requests.RequestException:
            time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    raise EmulatorUnavailable(f"{name} did not answer on {ready_url} within {timeout:.0f} s; its log: {log}")


def _bin(tool: str) -> str:
    return str(Path(sys.executable).parent / tool)


@contextmanager
def s3_server(workdir: Path, port: int | None = None) -> Iterator[Emulator]:
    """moto's standalone S3 server; credentials and endpoint as environment variables, as in the cloud."""
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server("moto S3 server", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], url,
                     workdir / "moto.log")
    emulator = Emulator("s3", url, {"AWS_ENDPOINT_URL": url, "AWS_ACCESS_KEY_ID": "testing",
                                    "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
                                    "AWS_DEFAULT_REGION": "us-east-1"}, process)
    try:
        yield emulator
    finally:
        emulator.stop()


@contextmanager
def gcs_server(workdir: Path) -> Iterator[Emulator]:
    """gcp-storage-emulator, in memory; clients find it through STORAGE_EMULATOR_HOST, as Google's SDKs do."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = start_server("GCS emulator", [_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                                      "--in-memory", "--default-bucket", "mlops-test"], url, workdir / "gcs.log")
    # NO_GCE_CHECK: no metadata server to probe for credentials here (the probe times out, off GCE, on every call).
    emulator = Emulator("gcs", url, {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "mlops-test",
                                     "NO_GCE_CHECK": "True"}, process)
    try:
        yield emulator
    finally:
        emulator.stop()


def _forget_filesystems() -> None:
    """fsspec keeps one file system object per set of arguments, whatever the environment says: forget them, so an
    endpoint from the environment is read afresh."""
    import adlfs
    import gcsfs
    import s3fs

    for cls in (s3fs.S3FileSystem, gcsfs.GCSFileSystem, adlfs.AzureBlobFileSystem):
        cls.clear_instance_cache()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    _forget_filesystems()
    try:
        yield
    finally:
        _forget_filesystems()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_bucket(emulator: Emulator, name: str | None = None) -> str:
    """A fresh bucket on the emulator, made with the cloud's own SDK; returns its URI."""
    name = name or f"mlops-{uuid.uuid4().hex[:10]}"
    with environment(emulator.env):
        if emulator.name == "s3":
            import boto3

            boto3.client("s3").create_bucket(Bucket=name)
            return f"s3://{name}"
        if emulator.name == "azure":
            from azure.storage.blob import BlobServiceClient

            BlobServiceClient.from_connection_string(os.environ["AZURE_STORAGE_CONNECTION_STRING"]).create_container(name)
            return f"az://{name}"
        from google.cloud import storage

        storage.Client(project="mlops-test").create_bucket(name)
        return f"gs://{name}"


AZURITE_BIN = Path(__file__).resolve().parent / "azurite" / "node_modules" / ".bin" / "azurite-blob"
# Azurite's own development account: Microsoft publishes this name and key for the emulator; no cloud accepts them.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


@contextmanager
def azure_server(workdir: Path) -> Iterator[Emulator]:
    """Azurite's Blob service; clients find it through AZURE_STORAGE_CONNECTION_STRING, as the Azure SDK does.
    Azurite has no Data Lake Gen2 (dfs) endpoint: hierarchical namespace is not emulated, so `az://` (blob) paths
    are what can be tested here; `abfss://` against a real account is left to the cloud."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"
    process = start_server("Azurite", [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                                 str(workdir / "azurite"), "--skipApiVersionCheck", "--silent"],
                     f"http://127.0.0.1:{port}", workdir / "azurite.log")
    connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                  f"BlobEndpoint={url};")
    emulator = Emulator("azure", url, {"AZURE_STORAGE_CONNECTION_STRING": connection}, process)
    try:
        yield emulator
    finally:
        emulator.stop()


def _postgres_bin(tool: str) -> str:
    found = shutil.which(tool) or next(iter(sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"), reverse=True)), None)
    if found is None:
        raise EmulatorUnavailable(f"PostgreSQL: {tool} is not installed (make emulators installs Debian's postgresql)")
    return str(found)


@contextmanager
def postgres_server(workdir: Path, databases: tuple[str, ...] = ("dagster", "mlflow")) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port (Debian's server binaries), with trust authentication
    for the local user; yields the server URL (`postgresql://USER@127.0.0.1:PORT`). PostgreSQL refuses to run as
    root, so as root it runs as the `postgres` system user."""
    import tempfile

    workdir.mkdir(parents=True, exist_ok=True)
    # A folder of its own under the temp root: as root, the server's user must be able to reach it, and pytest's
    # folders are private to root.
    cluster = Path(tempfile.mkdtemp(prefix="mlops-pg-"))
    data, sockets = cluster / "data", cluster / "sockets"
    sockets.mkdir()
    as_user: list[str] = []
    user = os.environ.get("USER") or "postgres"
    if os.geteuid() == 0:
        user = "postgres"
        as_user = ["runuser", "-u", user, "--"]
        for path in (cluster, sockets):
            shutil.chown(path, user)
    port = free_port()
    init = subprocess.run([*as_user, _postgres_bin("initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8"],
                          capture_output=True, text=True)
    if init.returncode:
        shutil.rmtree(cluster, ignore_errors=True)
        raise EmulatorUnavailable(f"PostgreSQL: initdb failed: {init.stderr.strip()[-500:]}")
    with open(workdir / "postgres.log", "ab") as out:
        process = subprocess.Popen([*as_user, _postgres_bin("postgres"), "-D", str(data), "-p", str(port), "-h",
                                    "127.0.0.1", "-k", str(sockets)], stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    server = Emulator("postgres", f"postgresql://{user}@127.0.0.1:{port}", process=process)
    try:
        import psycopg2

        deadline = time.monotonic() + 30
        while True:
            try:
                connection = psycopg2.connect(host="127.0.0.1", port=port, user=user, dbname="postgres")
                break
            except psycopg2.OperationalError as exc:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise EmulatorUnavailable(f"PostgreSQL did not start on port {port}: {exc}; its log: "
                                              f"{workdir / 'postgres.log'}") from None
                time.sleep(0.2)
        connection.autocommit = True
        with connection.cursor() as cursor:
            for name in databases:
                cursor.execute(f'CREATE DATABASE "{name}"')
        connection.close()
        yield server.url
    finally:
        server.stop()
        shutil.rmtree(cluster, ignore_errors=True)
