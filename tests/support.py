"""What the tests and the benchmarks share: an isolated platform home, a free loopback port, running the real job,
and the integrations the local profile builds (registry, landing store, serving backend)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg

from mlops_platform.core import data
from mlops_platform.core.spec import CanarySpec, ModelSpec, SloSpec, load_specs
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.profiles import load_profile
from mlops_platform.integrations.registry import MlflowRegistry
from mlops_platform.integrations.serving.local import LocalServing
from mlops_platform.integrations.storage import LandingStore

REPO = Path(__file__).resolve().parents[1]
HOME_ENV = ("MLOPS_HOME", "DAGSTER_HOME", "MLOPS_SERVING_PORT", "MLOPS_GRPC_PORT", "MLOPS_PROFILE", "MLOPS_MODELS_DIR")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def platform_home(base: Path | None = None) -> Iterator[Path]:
    """MLOPS_HOME, DAGSTER_HOME and a free serving port in a fresh folder, on the local profile; on the way out the
    model server is stopped and the environment restored."""
    home = Path(tempfile.mkdtemp(prefix="mlops-home-", dir=base))
    (home / "dagster_home").mkdir()
    shutil.copy(REPO / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    saved = {key: os.environ.get(key) for key in HOME_ENV}
    os.environ.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"),
                      MLOPS_SERVING_PORT=str(free_port()), MLOPS_GRPC_PORT=str(free_port()), MLOPS_PROFILE="local")
    os.environ.pop("MLOPS_MODELS_DIR", None)
    try:
        yield home
    finally:
        serving().stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


CHURN_FEATURES = [
    {"name": "plan", "type": "categorical", "categories": ["basic", "pro", "enterprise"]},
    {"name": "region", "type": "categorical"},
    "tenure",
    "monthly",
    {"name": "autopay", "type": "boolean"},
    {"name": "signup", "type": "datetime"},
]


def churn_frame(n: int = 1200, seed: int = 0):
    """Customers with a plan, a region, tenure, a monthly charge, autopay and a sign-up date; churn depends on them."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    plan = rng.choice(["basic", "pro", "enterprise"], n, p=[0.5, 0.35, 0.15])
    region = rng.choice(["north", "south", "east", "west"], n)
    tenure = rng.integers(1, 72, n)
    autopay = rng.random(n) < 0.6
    monthly = rng.normal(50, 10, n) + (plan == "pro") * 20 + (plan == "enterprise") * 60
    logit = 0.5 + 2.5 * (plan == "basic") - 0.06 * tenure + 1.5 * (~autopay) + 1.0 * (region == "south")
    churned = np.where(rng.random(n) < 1 / (1 + np.exp(-logit)), "yes", "no")
    signup = pd.Timestamp("2024-01-01") + pd.to_timedelta(rng.integers(0, 700, n), unit="D")
    return pd.DataFrame({"customer_id": [f"C{i:05d}" for i in range(n)], "plan": plan, "region": region,
                         "tenure": tenure, "monthly": monthly.round(2), "autopay": autopay,
                         "signup": signup.strftime("%Y-%m-%d"), "churned": churned})


def spec_named(name: str) -> ModelSpec:
    return next(s for s in load_specs() if s.name == name)


def breast_cancer() -> ModelSpec:
    return spec_named("breast_cancer")


def fast(spec: ModelSpec, **canary: float) -> ModelSpec:
    """The spec with short canary and watch windows, so a test run takes seconds, not tens of seconds. A canary must be
    5 ms slower, not 1, before latency alone rolls it back: sub-millisecond timings jitter on a loaded 2-core box."""
    return spec.model_copy(update={
        "canary": CanarySpec(**{"window_seconds": 1.5, "min_requests": 20, "max_window_seconds": 6.0, "replay_rps": 200,
                                "min_latency_increase_ms": 5.0, **canary}),
        "slo": SloSpec(watch_seconds=1.5, min_requests=20),
    })


def registry() -> MlflowRegistry:
    return load_profile().resources["mlflow"].get_registry()


def serving() -> LocalServing:
    return load_profile().resources["serving"].get_backend()


def landing() -> LandingStore:
    return load_profile().resources["landing"].get_store()


def seed(spec: ModelSpec, batches: int = 3) -> None:
    store = landing()
    for i, batch in enumerate(data.bundled_batches(spec.dataset, batches)):
        store.write(spec.name, f"seed-{i:03d}.csv", data.encode_batch(batch))


def run_job(spec: ModelSpec, raise_on_error: bool = False) -> dg.ExecuteInProcessResult:
    """The model's real job, executed in process against the DAGSTER_HOME instance."""
    from mlops_platform.definitions import build_definitions

    defs = build_definitions(specs=[spec])
    with dg.DagsterInstance.get() as instance:
        return defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, raise_on_error=raise_on_error)


def serve_model(spec: ModelSpec) -> dg.ExecuteInProcessResult:
    """Seed landing with the bundled data and run the model's job, so that its champion serves."""
    seed(spec)
    return run_job(spec, raise_on_error=True)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult, model: str | None = None) -> dict[str, dict]:
    """Asset name → its materialization metadata (raw values), for one model's assets when a run holds several."""
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        if model is None or mat.asset_key.path[0] == model:
            out[mat.asset_key.path[-1]] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def register_broken_version(spec: ModelSpec) -> str:
    """A version fitted on one feature fewer than its signature promises: every request to it fails."""
    import mlflow
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    frame = data.bundled_batches(spec.dataset, 1)[0]
    features = spec.dataset.feature_names
    model = LogisticRegression(max_iter=500).fit(frame[features[:-1]].to_numpy(), frame[spec.dataset.target])
    mlflow.set_tracking_uri(registry().tracking_uri)
    mlflow.set_registry_uri(registry().tracking_uri)  # never another test's registry
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", signature=infer_signature(frame[features], frame[spec.dataset.target]),
                                        pip_requirements=["scikit-learn"])
    return str(mlflow.register_model(info.model_uri, spec.registered_name).version)


def register_copy_of_champion(spec: ModelSpec) -> str:
    """Another registered version of the champion's own model: healthy, and not the champion."""
    client = registry().client()
    current = client.get_model_version_by_alias(spec.registered_name, "champion")
    return str(client.create_model_version(spec.registered_name, source=current.source, run_id=current.run_id).version)


def write_spec(spec: ModelSpec, folder: Path) -> Path:
    """The spec as a YAML file in `folder`, for runs in another process (`MLOPS_MODELS_DIR=folder`)."""
    import yaml

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{spec.name}.yaml"
    path.write_text(yaml.safe_dump(spec.model_dump(mode="json", by_alias=True, exclude_none=True), sort_keys=False))
    return path


def dagster_execute(job: str, models_dir: Path, log: Path):
    """`dagster job execute` of one job in its own process (and process group), as a user or a schedule runs it."""
    import subprocess
    import sys

    env = {**os.environ, "MLOPS_MODELS_DIR": str(models_dir)}
    with open(log, "ab") as out:
        return subprocess.Popen([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m",
                                 "mlops_platform.definitions", "-j", job], cwd=REPO, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)


class Traffic:
    """Background V1 requests at about `rps`, recording for each when it was sent and its status (0 when refused)."""

    def __init__(self, url: str, body: dict, rps: float = 100.0, workers: int = 4):
        import threading

        self.url, self.body, self.interval = url, body, workers / rps
        self.results: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(workers)]

    def _run(self) -> None:
        import time

        import requests

        session = requests.Session()
        while not self._stop.is_set():
            sent = time.monotonic()  # when it was sent: an answer counts as "after" an event only if it was asked after it
            try:
                status = session.post(self.url, json=self.body, timeout=5).status_code
            except requests.RequestException:
                status = 0
                session = requests.Session()
            self.results.append((sent, status))
            self._stop.wait(self.interval)

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
