"""Resources: MLflow tracking and registry, landing storage, and model serving. Assets reach infrastructure only here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator
from urllib.parse import urlparse

import dagster as dg
import pandas as pd
import requests

from mlops_platform.aliases import CHALLENGER, CHAMPION
from mlops_platform.core.canary import Snapshot, parse_prometheus
from mlops_platform.core.spec import ModelSpec
from mlops_platform.core.training import Classifier



# --------------------------------------------------------------------------- MLflow


@dataclass(frozen=True)
class LoggedRun:
    run_id: str
    experiment_id: str
    model_uri: str
    url: str


class MLflowResource(dg.ConfigurableResource):
    """MLflow tracking server and model registry."""

    tracking_uri: str
    registry_uri: str | None = None
    artifact_root: str | None = None
    ui_url: str = "http://127.0.0.1:5000"

    def client(self):
        from mlflow import MlflowClient

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

    @contextmanager
    def _active(self) -> Iterator[None]:
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        if self.registry_uri:
            mlflow.set_registry_uri(self.registry_uri)
        yield

    def _experiment_id(self, name: str) -> str:
        client = self.client()
        experiment = client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.artifact_root:
            location = f"{self.artifact_root.rstrip('/')}/{name}"
            if "://" not in location:
                location = Path(location).resolve().as_uri()
        return client.create_experiment(name, artifact_location=location)

    def run_url(self, experiment_id: str, run_id: str) -> str:
        return f"{self.ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"

    def log_training(
        self,
        spec: ModelSpec,
        model: Classifier,
        example: pd.DataFrame,
        params: dict,
        metrics: dict[str, float],
        tags: dict[str, str],
        images: dict[str, bytes],
        documents: dict[str, dict],
    ) -> LoggedRun:
        """One MLflow run: parameters, holdout metrics, PNG images, JSON documents and the model with its signature."""
        import mlflow
        from mlflow.models import infer_signature

        from mlops_platform.core.training import feature_matrix, predict_labels

        with self._active():
            experiment_id = self._experiment_id(spec.registered_name)
            with mlflow.start_run(experiment_id=experiment_id, tags=tags) as run:
                mlflow.log_params(params)
                mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
                for name, png in images.items():
                    mlflow.log_image(_png(png), name)
                for name, document in documents.items():
                    mlflow.log_dict(document, name)
                inputs = example[spec.dataset.features]
                signature = infer_signature(inputs, predict_labels(model, feature_matrix(inputs, spec.dataset.features)))
                info = _log_model(spec, model, inputs, signature)
        return LoggedRun(run.info.run_id, experiment_id, info.model_uri, self.run_url(experiment_id, run.info.run_id))

    def register(self, spec: ModelSpec, run: LoggedRun, tags: dict[str, str]) -> str:
        """A new registered version of the run's model, aliased `challenger`."""
        import mlflow

        with self._active():
            version = mlflow.register_model(run.model_uri, spec.registered_name, tags=tags).version
        self.client().set_registered_model_alias(spec.registered_name, CHALLENGER, version)
        return str(version)

    def version_for(self, name: str, alias: str) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def load(self, name: str, version: str) -> Classifier:
        from mlops_platform.serving.loader import load_registered

        with self._active():
            return load_registered(self.client(), name, version=version).classifier

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)

    def demote(self, name: str, version: str, previous: str, reason: str) -> None:
        """Give `champion` back to the previous version after the promoted one failed in production."""
        client = self.client()
        client.set_registered_model_alias(name, CHAMPION, previous)
        client.set_model_version_tag(name, version, "rolled_back", reason)
        client.delete_model_version_tag(name, previous, "superseded_by")

    def promote(self, name: str, version: str) -> str | None:
        """Move `champion` to this version; returns the version it left."""
        previous = self.version_for(name, CHAMPION)
        client = self.client()
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promoted_at", str(int(time.time())))
        if previous and previous != version:
            client.set_model_version_tag(name, previous, "superseded_by", version)
        return previous


def _png(content: bytes):
    import io

    from PIL import Image

    return Image.open(io.BytesIO(content))


def _log_model(spec: ModelSpec, model: Classifier, example: pd.DataFrame, signature):
    """Log with a minimal requirement list; MLflow's inference would otherwise add torch to every sklearn model."""
    from importlib.metadata import version

    base = [f"mlflow=={version('mlflow')}", f"numpy=={version('numpy')}", f"pandas=={version('pandas')}"]
    if spec.estimator.framework == "torch":
        from mlflow import pytorch as mlflow_pytorch

        return mlflow_pytorch.log_model(
            model.to_logged(),
            name="model",
            # A pickled module keeps the platform's TabularMLP (with its classes buffer) as it was trained; MLflow's
            # default, a torch.export graph, would drop the buffers our runtime reads.
            serialization_format="pickle",
            input_example=example.head(5).astype("float32"),
            signature=signature,
            pip_requirements=[*base, f"torch=={version('torch').split('+')[0]}"],
        )
    import skops.io
    from mlflow import sklearn as mlflow_sklearn

    # The platform trained this object itself, so the types skops flags (tree node storage, for one) are ours to trust.
    trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
    with warnings.catch_warnings():
        # MLflow checks the input example through pyfunc, which hands the fitted-on-arrays pipeline a DataFrame.
        warnings.filterwarnings("ignore", message="X has feature names")
        return mlflow_sklearn.log_model(
            model,
            name="model",
            signature=signature,
            input_example=example.head(5),
            pip_requirements=[*base, f"scikit-learn=={version('scikit-learn')}", f"skops=={version('skops')}"],
            skops_trusted_types=trusted or None,
        )


# --------------------------------------------------------------------------- landing storage


class LandingStore(dg.ConfigurableResource):
    """Where raw batches land, per model, and where bad ones are quarantined; never deletes data."""

    def list_batches(self, model: str) -> list[str]:
        raise NotImplementedError

    def read(self, model: str, name: str) -> bytes:
        raise NotImplementedError

    def write(self, model: str, name: str, payload: bytes) -> str:
        raise NotImplementedError

    def quarantine(self, model: str, name: str, reason: str) -> str:
        """Move a bad batch aside with a note saying why; returns where it went."""
        raise NotImplementedError

    def fingerprint(self, model: str) -> dict[str, str]:
        """Batch name → a change token (mtime or etag); sensors compare these."""
        raise NotImplementedError


def _is_batch(name: str) -> bool:
    return name.endswith((".csv", ".parquet"))


class LocalLandingStore(LandingStore):
    """Landing and quarantine folders on the local disk."""

    landing_dir: str
    quarantine_dir: str

    def _landing(self, model: str) -> Path:
        return Path(self.landing_dir) / model

    def list_batches(self, model: str) -> list[str]:
        folder = self._landing(model)
        return sorted(p.name for p in folder.iterdir() if p.is_file() and _is_batch(p.name)) if folder.is_dir() else []

    def read(self, model: str, name: str) -> bytes:
        return (self._landing(model) / name).read_bytes()

    def write(self, model: str, name: str, payload: bytes) -> str:
        path = self._landing(model) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{name}.partial")
        partial.write_bytes(payload)
        partial.replace(path)  # a sensor never sees half a file
        return str(path)

    def quarantine(self, model: str, name: str, reason: str) -> str:
        folder = Path(self.quarantine_dir) / model
        folder.mkdir(parents=True, exist_ok=True)
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = folder / f"{stamp}-{name}"
        (self._landing(model) / name).replace(target)
        target.with_name(f"{target.name}.reason.json").write_text(json.dumps({"batch": name, "reason": reason}, indent=2))
        return str(target)

    def fingerprint(self, model: str) -> dict[str, str]:
        folder = self._landing(model)
        return {n: str((folder / n).stat().st_mtime_ns) for n in self.list_batches(model)}


def _bucket_and_prefix(uri: str, model: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    return parsed.netloc, "/".join(p for p in (parsed.path.strip("/"), model) if p) + "/"


class S3LandingStore(LandingStore):
    """Landing and quarantine prefixes in S3 (`s3://bucket/prefix`)."""

    s3: dg.ConfigurableResource  # a dagster_aws S3Resource; typed loosely so local runs never import boto3
    landing_uri: str
    quarantine_uri: str

    def _objects(self, model: str) -> dict[str, dict]:
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        pages = self.s3.get_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix, Delimiter="/")
        return {o["Key"][len(prefix):]: o for page in pages for o in page.get("Contents", []) if _is_batch(o["Key"])}

    def list_batches(self, model: str) -> list[str]:
        return sorted(self._objects(model))

    def read(self, model: str, name: str) -> bytes:
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        return self.s3.get_client().get_object(Bucket=bucket, Key=prefix + name)["Body"].read()

    def write(self, model: str, name: str, payload: bytes) -> str:
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        self.s3.get_client().put_object(Bucket=bucket, Key=prefix + name, Body=payload)
        return f"s3://{bucket}/{prefix}{name}"

    def quarantine(self, model: str, name: str, reason: str) -> str:
        client = self.s3.get_client()
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        q_bucket, q_prefix = _bucket_and_prefix(self.quarantine_uri, model)
        key = f"{q_prefix}{time.strftime('%Y%m%dT%H%M%S')}-{name}"
        client.copy_object(Bucket=q_bucket, Key=key, CopySource={"Bucket": bucket, "Key": prefix + name})
        client.put_object(Bucket=q_bucket, Key=f"{key}.reason.json", Body=json.dumps({"batch": name, "reason": reason}).encode())
        client.delete_object(Bucket=bucket, Key=prefix + name)  # only after the copy succeeded
        return f"s3://{q_bucket}/{key}"

    def fingerprint(self, model: str) -> dict[str, str]:
        return {n: o["ETag"] for n, o in self._objects(model).items()}


class GCSLandingStore(LandingStore):
    """Landing and quarantine prefixes in Google Cloud Storage (`gs://bucket/prefix`)."""

    gcs: dg.ConfigurableResource  # a dagster_gcp GCSResource
    landing_uri: str
    quarantine_uri: str

    def _blobs(self, model: str) -> dict:
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        blobs = self.gcs.get_client().list_blobs(bucket, prefix=prefix, delimiter="/")
        return {b.name[len(prefix):]: b for b in blobs if _is_batch(b.name)}

    def list_batches(self, model: str) -> list[str]:
        return sorted(self._blobs(model))

    def read(self, model: str, name: str) -> bytes:
        return self._blobs(model)[name].download_as_bytes()

    def write(self, model: str, name: str, payload: bytes) -> str:
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        self.gcs.get_client().bucket(bucket).blob(prefix + name).upload_from_string(payload)
        return f"gs://{bucket}/{prefix}{name}"

    def quarantine(self, model: str, name: str, reason: str) -> str:
        client = self.gcs.get_client()
        bucket, prefix = _bucket_and_prefix(self.landing_uri, model)
        q_bucket, q_prefix = _bucket_and_prefix(self.quarantine_uri, model)
        key = f"{q_prefix}{time.strftime('%Y%m%dT%H%M%S')}-{name}"
        source = client.bucket(bucket)
        source.copy_blob(source.blob(prefix + name), client.bucket(q_bucket), key)
        client.bucket(q_bucket).blob(f"{key}.reason.json").upload_from_string(json.dumps({"batch": name, "reason": reason}))
        source.blob(prefix + name).delete()
        return f"gs://{q_bucket}/{key}"

    def fingerprint(self, model: str) -> dict[str, str]:
        return {n: str(b.etag) for n, b in self._blobs(model).items()}


class ADLS2LandingStore(LandingStore):
    """Landing and quarantine folders in Azure Data Lake Storage Gen2 (`abfss://container@account.dfs.core.windows.net/prefix`)."""

    adls2: dg.ConfigurableResource  # a dagster_azure ADLS2Resource
    landing_uri: str
    quarantine_uri: str

    def _fs(self, uri: str, model: str):
        parsed = urlparse(uri)
        container = parsed.netloc.split("@")[0]
        path = "/".join(p for p in (parsed.path.strip("/"), model) if p)
        return self.adls2.adls2_client.get_file_system_client(container), path

    def _paths(self, model: str) -> dict:
        fs, folder = self._fs(self.landing_uri, model)
        return {p.name.rsplit("/", 1)[-1]: p for p in fs.get_paths(folder, recursive=False) if _is_batch(p.name)}

    def list_batches(self, model: str) -> list[str]:
        return sorted(self._paths(model))

    def read(self, model: str, name: str) -> bytes:
        fs, folder = self._fs(self.landing_uri, model)
        return fs.get_file_client(f"{folder}/{name}").download_file().readall()

    def write(self, model: str, name: str, payload: bytes) -> str:
        fs, folder = self._fs(self.landing_uri, model)
        fs.get_file_client(f"{folder}/{name}").upload_data(payload, overwrite=True)
        return f"{self.landing_uri.rstrip('/')}/{model}/{name}"

    def quarantine(self, model: str, name: str, reason: str) -> str:
        fs, folder = self._fs(self.landing_uri, model)
        q_fs, q_folder = self._fs(self.quarantine_uri, model)
        key = f"{q_folder}/{time.strftime('%Y%m%dT%H%M%S')}-{name}"
        q_fs.create_directory(q_folder)
        fs.get_file_client(f"{folder}/{name}").rename_file(f"{q_fs.file_system_name}/{key}")  # an atomic move
        q_fs.get_file_client(f"{key}.reason.json").upload_data(json.dumps({"batch": name, "reason": reason}), overwrite=True)
        return f"{self.quarantine_uri.rstrip('/')}/{key}"

    def fingerprint(self, model: str) -> dict[str, str]:
        return {n: str(p.etag) for n, p in self._paths(model).items()}


# --------------------------------------------------------------------------- serving


@dataclass(frozen=True)
class Endpoint:
    """A served model as clients reach it."""

    name: str
    version: str
    base_url: str

    @property
    def v1_predict_url(self) -> str:
        return f"{self.base_url}/v1/models/{self.name}:predict"

    @property
    def v2_infer_url(self) -> str:
        return f"{self.base_url}/v2/models/{self.name}/infer"


class ModelServing(dg.ConfigurableResource):
    """Puts registered model versions behind an HTTP endpoint and reports how each revision is doing.

    An endpoint has a stable revision and at most one canary taking a share of its requests. Local and cluster
    backends implement the same calls, so assets never know which one they talk to.
    """

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0) -> None:
        raise NotImplementedError

    def deploy(self, name: str, version: str) -> Endpoint:
        """Serve `version` as the only (stable) revision at 100%."""
        raise NotImplementedError

    def snapshot(self, name: str) -> Snapshot:
        """Cumulative request counts and latency buckets per revision (see `core.canary`)."""
        raise NotImplementedError

    @contextmanager
    def replay(self, name: str, rows: list[list[float]], rps: float) -> Iterator[None]:
        """Traffic to judge revisions by. Real users provide it in a cluster; locally holdout rows are replayed."""
        yield


class LocalModelServer(ModelServing):
    """A real KServe model server process on loopback, shared by every model, started once and reused."""

    mlflow: MLflowResource
    host: str = "127.0.0.1"
    port: int = 8080
    state_dir: str
    start_timeout_s: float = 90.0

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def _state_file(self) -> Path:
        return Path(self.state_dir) / "server.json"

    @property
    def log_file(self) -> Path:
        return Path(self.state_dir) / "server.log"

    def _live(self) -> bool:
        try:
            return requests.get(f"{self.base_url}/v2/health/live", timeout=1).ok
        except requests.RequestException:
            return False

    def running_pid(self) -> int | None:
        """The PID of the server this state folder started, if it is still alive."""
        try:
            pid = json.loads(self._state_file.read_text())["pid"]
            os.kill(pid, 0)
            return pid
        except (FileNotFoundError, ProcessLookupError, KeyError, ValueError, PermissionError):
            return None

    def ensure_running(self) -> int:
        """Start the server unless ours already answers on the port; idempotent."""
        pid = self.running_pid()
        if pid is not None:
            state = json.loads(self._state_file.read_text())
            if (state.get("host"), state.get("port")) == (self.host, self.port) and self._live():
                return pid
            self.stop()
        Path(self.state_dir).mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "mlops_platform.serving", "--host", self.host, "--port", str(self.port),
                   "--tracking-uri", self.mlflow.tracking_uri, "--routing-file", str(Path(self.state_dir) / "routing.json")]
        if self.mlflow.registry_uri:
            command += ["--registry-uri", self.mlflow.registry_uri]
        with open(self.log_file, "ab") as log:
            process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                       start_new_session=True)  # outlives the Dagster run that started it
        self._state_file.write_text(json.dumps({"pid": process.pid, "host": self.host, "port": self.port}))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"model server exited with {process.returncode}:\n{self._log_tail()}")
            if self._live():
                return process.pid
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"model server did not answer within {self.start_timeout_s}s:\n{self._log_tail()}")

    def _log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return ""

    def _put_routing(self, name: str, body: dict) -> dict:
        response = requests.put(f"{self.base_url}/mlops/v1/endpoints/{name}/routing", json=body, timeout=120)
        if not response.ok:
            raise RuntimeError(f"model server refused routing {body} for {name}: {response.status_code} {response.text}")
        return response.json()

    def set_routing(self, name: str, stable: str, canary: str | None = None, canary_percent: int = 0) -> None:
        self.ensure_running()
        self._put_routing(name, {"stable": stable, "canary": canary, "canary_percent": canary_percent})

    def deploy(self, name: str, version: str) -> Endpoint:
        """Serve `version` alone; the server swaps it in place, no restart, and reports what it serves."""
        self.set_routing(name, version)
        served = requests.get(f"{self.base_url}/v2/models/{name}", timeout=10).json().get("versions", [])
        if served != [version]:
            raise RuntimeError(f"model server serves {name} versions {served}, expected [{version!r}]")
        return Endpoint(name=name, version=version, base_url=self.base_url)

    def snapshot(self, name: str) -> Snapshot:
        return parse_prometheus(requests.get(f"{self.base_url}/metrics", timeout=10).text, name)

    @contextmanager
    def replay(self, name: str, rows: list[list[float]], rps: float) -> Iterator[None]:
        """Holdout rows sent one per V1 request at about `rps`, from background threads, until the block ends."""
        url = f"{self.base_url}/v1/models/{name}:predict"
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
        self._state_file.unlink(missing_ok=True)
        return True


def _reap(pid: int) -> None:
    """Collect the exit status when the server is our own child, so it does not linger as a zombie."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
