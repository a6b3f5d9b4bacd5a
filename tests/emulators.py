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
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

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


def _start(name: str, command: list[str], ready_url: str, log: Path, timeout: float = 30.0) -> subprocess.Popen:
    if shutil.which(command[0]) is None and not Path(command[0]).exists():
        raise EmulatorUnavailable(f"{name}: {command[0]} is not installed (make install puts it in .venv)")
    with open(log, "ab") as out:  # the child keeps its own descriptor
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise EmulatorUnavailable(f"{name} exited with {process.returncode} at start; its log: {log}")
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
def s3_server(workdir: Path) -> Iterator[Emulator]:
    """moto's standalone S3 server; credentials and endpoint as environment variables, as in the cloud."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process = _start("moto S3 server", [_bin("moto_server"), "-H", "127.0.0.1", "-p", str(port)], url,
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
    process = _start("GCS emulator", [_bin("gcp-storage-emulator"), "start", "--host", "127.0.0.1", "--port", str(port),
                                      "--in-memory", "--default-bucket", "mlops-test"], url, workdir / "gcs.log")
    # NO_GCE_CHECK: no metadata server to probe for credentials here (the probe times out, off GCE, on every call).
    emulator = Emulator("gcs", url, {"STORAGE_EMULATOR_HOST": url, "GOOGLE_CLOUD_PROJECT": "mlops-test",
                                     "NO_GCE_CHECK": "True"}, process)
    try:
        yield emulator
    finally:
        emulator.stop()


@contextmanager
def environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def new_bucket(emulator: Emulator) -> str:
    """A fresh bucket on the emulator, made with the cloud's own SDK; returns its URI."""
    name = f"mlops-{uuid.uuid4().hex[:10]}"
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
    process = _start("Azurite", [str(AZURITE_BIN), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--location",
                                 str(workdir / "azurite"), "--skipApiVersionCheck", "--silent"],
                     f"http://127.0.0.1:{port}", workdir / "azurite.log")
    connection = (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
                  f"BlobEndpoint={url};")
    emulator = Emulator("azure", url, {"AZURE_STORAGE_CONNECTION_STRING": connection}, process)
    try:
        yield emulator
    finally:
        emulator.stop()
