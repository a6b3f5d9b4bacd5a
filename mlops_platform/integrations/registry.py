"""The model registry: MLflow tracking, registered versions, the aliases the platform moves, model logging with the
data it was trained on, and loading a registered version back (for the gate and the serving runtime)."""

from __future__ import annotations

import dataclasses
import io
import json
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd

from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import ModelSpec
from mlops_platform.core.training import EncodedLabels, Model, is_classifier, predict

BATCHES_ARTIFACT = "batches.json"
REFERENCE_ARTIFACT = "reference_sample.parquet"
REFERENCE_ROWS = 20_000  # the training rows kept as the drift reference: plenty for PSI and KS, small to store
MONITORING_EXPERIMENT = "{name}-monitoring"


class Alias(StrEnum):
    """The registry aliases the platform moves: `challenger` on registration, `champion` on promotion."""

    CHAMPION = "champion"
    CHALLENGER = "challenger"


class VersionTag(StrEnum):
    """Tags the platform writes on registered versions: what each judge decided, and why."""

    QUALITY_GATE = "quality_gate"  # passed | failed
    QUALITY_GATE_REASON = "quality_gate_reason"
    CANARY = "canary"  # passed | rejected | abandoned
    CANARY_REASON = "canary_reason"
    PROMOTED_AT = "promoted_at"
    SUPERSEDED_BY = "superseded_by"
    ROLLED_BACK = "rolled_back"
    DAGSTER_RUN_ID = "dagster_run_id"


class CanaryStatus(StrEnum):
    PASSED = "passed"
    REJECTED = "rejected"
    ABANDONED = "abandoned"  # its lease ran out with no verdict: the run that started it died or was cancelled


@dataclass(frozen=True)
class LoggedRun:
    """A tracked training run and the model it logged."""

    run_id: str
    experiment_id: str
    model_uri: str
    url: str


@dataclass(frozen=True)
class TrainingData:
    """Exactly what a model was trained on: each batch with its content hash, and one version for the lot."""

    batches: list[dict]  # {"name", "origin", "uri", "sha256", "token", "rows"}
    data_version: str
    frame: pd.DataFrame  # the training rows, recorded as the run's MLflow dataset input


@dataclass(frozen=True)
class LoadedModel:
    """A registered version loaded back, with what its MLflow signature says about its inputs and outputs."""

    name: str
    version: str
    model: Model
    feature_names: list[str]
    feature_types: list[str]  # MLflow column types: double, long, string, boolean, datetime, ...
    output_type: str
    flavor: str

    @property
    def is_classifier(self) -> bool:
        return is_classifier(self.model)

    @property
    def classes(self):
        return self.model.classes_ if self.is_classifier else None


class ModelRegistry(ABC):
    """Where trained models are tracked, versioned and aliased."""

    @abstractmethod
    def log_training(self, spec: ModelSpec, model: Model, data: TrainingData, params: dict,
                     metrics: dict[str, float], tags: dict[str, str], images: dict[str, bytes],
                     documents: dict[str, dict]) -> LoggedRun:
        """One tracked run: parameters, holdout metrics, images, documents, the data it was trained on (an MLflow
        dataset input and the batch list) and the model with its signature."""

    @abstractmethod
    def reference_data(self, name: str, version: str) -> tuple[pd.DataFrame, Task]:
        """The training rows (a sample) a registered version learnt from, and its task: the drift reference."""

    @abstractmethod
    def log_monitoring(self, name: str, version: str, report: dict, images: dict[str, bytes]) -> str:
        """A drift report as a tracked run of the model's monitoring experiment; returns its URL."""

    @abstractmethod
    def trained_batches(self, name: str, version: str) -> list[dict] | None:
        """The batches a registered version was trained on (name, sha256, token), or None when not recorded."""

    @abstractmethod
    def register(self, spec: ModelSpec, run: LoggedRun, tags: dict[str, str]) -> str:
        """A new registered version of the run's model; returns the version. No alias yet: `challenger` is for
        versions that passed the quality gate."""

    @abstractmethod
    def record_gate(self, name: str, version: str, passed: bool, reason: str) -> None:
        """Tag the quality gate's decision; a passed version becomes `challenger`, a failed one never holds it."""

    @abstractmethod
    def passed_gate(self, name: str, version: str) -> bool:
        """Whether this version exists and passed the quality gate."""

    @abstractmethod
    def record_canary(self, name: str, version: str, status: CanaryStatus, reason: str) -> None:
        """Tag what the canary analysis (or the lease reaper) decided; only a passed canary keeps `challenger`."""

    @abstractmethod
    def version_for(self, name: str, alias: Alias) -> str | None:
        """The version an alias points at, or None."""

    @abstractmethod
    def load(self, name: str, version: str) -> Model:
        """A registered version's model."""

    @abstractmethod
    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def promote(self, name: str, version: str) -> str | None:
        """Move `champion` to this version; returns the version it left."""

    @abstractmethod
    def demote(self, name: str, version: str, previous: str, reason: str) -> None:
        """Give `champion` back to the previous version after the promoted one failed in production."""

    @abstractmethod
    def version_url(self, name: str, version: str) -> str:
        """Where a person sees this version."""


class MlflowRegistry(ModelRegistry):
    """MLflow's tracking store and model registry."""

    def __init__(self, tracking_uri: str, registry_uri: str | None = None, artifact_root: str | None = None,
                 ui_url: str = "http://127.0.0.1:5000"):
        self.tracking_uri = tracking_uri
        self.registry_uri = registry_uri
        self.artifact_root = artifact_root
        self.ui_url = ui_url.rstrip("/")

    def client(self):
        from mlflow import MlflowClient

        # Never the process-wide registry URI, which another registry object may have set: this one's, or its store.
        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri or self.tracking_uri)

    @contextmanager
    def _active(self) -> Iterator[None]:
        """MLflow's fluent API and `models:/` URIs read the process-wide URIs, not a client's."""
        import mlflow

        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.registry_uri or self.tracking_uri)
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
        return f"{self.ui_url}/#/experiments/{experiment_id}/runs/{run_id}"

    def version_url(self, name: str, version: str) -> str:
        return f"{self.ui_url}/#/models/{name}/versions/{version}"

    def log_training(self, spec: ModelSpec, model: Model, data: TrainingData, params: dict,
                     metrics: dict[str, float], tags: dict[str, str], images: dict[str, bytes],
                     documents: dict[str, dict]) -> LoggedRun:
        import mlflow
        from mlflow.models import infer_signature

        from mlops_platform.core.data import model_input

        with self._active():
            experiment_id = self._experiment_id(spec.registered_name)
            with mlflow.start_run(experiment_id=experiment_id, tags={**tags, "data_version": data.data_version}) as run:
                mlflow.log_params(params)
                mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items()})
                for name, png in images.items():
                    mlflow.log_image(_png(png), name)
                for name, document in documents.items():
                    mlflow.log_dict(document, name)
                mlflow.log_dict({"data_version": data.data_version, "batches": data.batches}, BATCHES_ARTIFACT)
                _log_reference(data.frame[[*spec.dataset.feature_names, spec.dataset.target]])
                mlflow.log_input(mlflow.data.from_pandas(data.frame, name=f"{spec.name}-train-{data.data_version[:12]}",
                                                         targets=spec.dataset.target, source=_dataset_source(data)),
                                 context="training")
                inputs = data.frame[spec.dataset.feature_names]
                labels, _ = predict(model, model_input(inputs.head(100), spec.dataset))
                signature = infer_signature(inputs, labels)
                info = _log_model(spec, model, inputs, signature)
        return LoggedRun(run.info.run_id, experiment_id, info.model_uri, self.run_url(experiment_id, run.info.run_id))

    def reference_data(self, name: str, version: str) -> tuple[pd.DataFrame, Task]:
        import mlflow

        run = self.client().get_run(self.client().get_model_version(name, version).run_id)
        with self._active():
            path = mlflow.artifacts.download_artifacts(f"runs:/{run.info.run_id}/{REFERENCE_ARTIFACT}")
        return pd.read_parquet(path), Task(run.data.tags.get("task", Task.MULTICLASS))

    def log_monitoring(self, name: str, version: str, report: dict, images: dict[str, bytes]) -> str:
        import mlflow

        with self._active():
            experiment_id = self._experiment_id(MONITORING_EXPERIMENT.format(name=name))
            with mlflow.start_run(experiment_id=experiment_id, run_name=f"drift v{version}",
                                  tags={"model": name, "model_version": version, "kind": "drift_report"}) as run:
                features = report.get("features") or []
                mlflow.log_metrics({"share_drifted": report.get("share_drifted", 0.0), "captured_rows": report.get("rows", 0),
                                    **{f"psi_{f['feature']}": f["psi"] for f in features},
                                    **{f"live_{k}": v for k, v in (report.get("quality") or {}).items()}})
                mlflow.log_dict(report, "drift_report.json")
                for image_name, png in images.items():
                    mlflow.log_image(_png(png), image_name)
        return self.run_url(experiment_id, run.info.run_id)

    def trained_batches(self, name: str, version: str) -> list[dict] | None:
        import mlflow
        from mlflow.exceptions import MlflowException

        try:
            run_id = self.client().get_model_version(name, version).run_id
            with self._active():
                return mlflow.artifacts.load_dict(f"runs:/{run_id}/{BATCHES_ARTIFACT}")["batches"]
        except (MlflowException, OSError, KeyError):
            return None

    def register(self, spec: ModelSpec, run: LoggedRun, tags: dict[str, str]) -> str:
        import mlflow

        with self._active():
            return str(mlflow.register_model(run.model_uri, spec.registered_name, tags=tags).version)

    def record_gate(self, name: str, version: str, passed: bool, reason: str) -> None:
        self.tag_version(name, version, {VersionTag.QUALITY_GATE: "passed" if passed else "failed",
                                         VersionTag.QUALITY_GATE_REASON: reason})
        if passed:
            self.client().set_registered_model_alias(name, Alias.CHALLENGER, version)
        else:
            self._drop_alias_if_held(name, Alias.CHALLENGER, version)

    def passed_gate(self, name: str, version: str) -> bool:
        from mlflow.exceptions import MlflowException

        try:
            tags = self.client().get_model_version(name, version).tags
        except MlflowException:
            return False
        return tags.get(VersionTag.QUALITY_GATE) == "passed"

    def record_canary(self, name: str, version: str, status: CanaryStatus, reason: str) -> None:
        self.tag_version(name, version, {VersionTag.CANARY: status, VersionTag.CANARY_REASON: reason})
        if status != CanaryStatus.PASSED:
            self._drop_alias_if_held(name, Alias.CHALLENGER, version)

    def _drop_alias_if_held(self, name: str, alias: Alias, version: str) -> None:
        if self.version_for(name, alias) == str(version):
            self.client().delete_registered_model_alias(name, alias)

    def version_for(self, name: str, alias: Alias) -> str | None:
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client().get_model_version_by_alias(name, alias).version)
        except MlflowException:
            return None

    def load(self, name: str, version: str) -> Model:
        with self._active():
            return load_registered(self.client(), name, version=version).model

    def tag_version(self, name: str, version: str, tags: dict[str, str]) -> None:
        client = self.client()
        for key, value in tags.items():
            client.set_model_version_tag(name, version, key, value)

    def demote(self, name: str, version: str, previous: str, reason: str) -> None:
        client = self.client()
        client.set_registered_model_alias(name, Alias.CHAMPION, previous)
        client.set_model_version_tag(name, version, VersionTag.ROLLED_BACK, reason)
        client.delete_model_version_tag(name, previous, VersionTag.SUPERSEDED_BY)

    def promote(self, name: str, version: str) -> str | None:
        previous = self.version_for(name, Alias.CHAMPION)
        client = self.client()
        client.set_registered_model_alias(name, Alias.CHAMPION, version)
        client.set_model_version_tag(name, version, VersionTag.PROMOTED_AT, str(int(time.time())))
        if previous and previous != version:
            client.set_model_version_tag(name, previous, VersionTag.SUPERSEDED_BY, version)
        return previous


def _log_reference(frame: pd.DataFrame) -> None:
    """A sample of the training rows, the reference live inputs are compared with."""
    import tempfile

    import mlflow

    sample = frame.sample(REFERENCE_ROWS, random_state=0) if len(frame) > REFERENCE_ROWS else frame
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / REFERENCE_ARTIFACT
        sample.to_parquet(path, index=False)
        mlflow.log_artifact(str(path))


def _dataset_source(data: TrainingData):
    """Where the training rows came from, as MLflow records it: the batches' own location when MLflow can resolve it
    (a local path, s3://, gs://, abfss://), else the batch list itself."""
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.exceptions import MlflowException

    uris = sorted({b["uri"] for b in data.batches})
    folders = sorted({uri.rsplit("/", 1)[0] for uri in uris if "/" in uri})
    if len(folders) == 1:
        try:
            return resolve_dataset_source(folders[0])
        except MlflowException:
            pass
    return CodeDatasetSource(tags={"batches": json.dumps([b["name"] for b in data.batches])[:5000],
                                   "data_version": data.data_version})


def _png(content: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(content))


def _requirements(spec: ModelSpec, model: Model) -> list[str]:
    """A minimal requirement list, from the packages the pipeline's objects come from; MLflow's own inference would add
    torch to every sklearn model."""
    from importlib.metadata import packages_distributions, version

    distributions = packages_distributions()
    wanted = {"mlflow", "numpy", "pandas", "scikit-learn", "skops"}
    steps = getattr(model, "steps", [("model", model)])
    for _, step in steps:
        for obj in (step, *getattr(step, "get_params", lambda deep=True: {})(deep=True).values()):
            top = type(obj).__module__.partition(".")[0]
            if top not in ("sklearn", "numpy", "builtins", "mlops_platform"):
                wanted.update(distributions.get(top, [top]))
    if spec.estimator.framework == "torch":
        wanted.add("torch")
    pins = []
    for dist in sorted(wanted):
        try:
            pins.append(f"{dist}=={version(dist).split('+')[0]}")
        except Exception:  # a module with no installed distribution (the user's own code): nothing to pin
            continue
    return pins


def _pure_sklearn(model: Model) -> bool:
    """skops can store pipelines made of scikit-learn and the platform's own transformers; anything else (a network,
    XGBoost, LightGBM, a factory's estimator) is stored with cloudpickle."""
    params = model.get_params(deep=True).values() if hasattr(model, "get_params") else []
    objs = [model, *(p for p in params if hasattr(p, "fit") or hasattr(p, "transform"))]
    return all(type(o).__module__.startswith(("sklearn.", "mlops_platform.core.training")) for o in objs)


def _log_model(spec: ModelSpec, model: Model, example: pd.DataFrame, signature):
    from mlflow import sklearn as mlflow_sklearn

    requirements = _requirements(spec, model)
    with warnings.catch_warnings():
        # MLflow checks the input example through pyfunc, which hands the fitted-on-arrays pipeline a DataFrame.
        warnings.filterwarnings("ignore", message="X has feature names")
        if not _pure_sklearn(model):
            return mlflow_sklearn.log_model(model, name="model", signature=signature, input_example=example.head(5),
                                            pip_requirements=requirements, serialization_format="cloudpickle")
        import skops.io

        # The platform trained this object itself, so the types skops flags (tree node storage, its own transformer
        # functions) are ours to trust.
        trusted = skops.io.get_untrusted_types(data=skops.io.dumps(model))
        return mlflow_sklearn.log_model(model, name="model", signature=signature, input_example=example.head(5),
                                        pip_requirements=requirements, skops_trusted_types=trusted or None)


def load_model_uri(model_uri: str) -> LoadedModel:
    """The model at an MLflow model URI, with its signature's input names and types and its output type."""
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    if "sklearn" not in info.flavors:
        raise ValueError(f"{model_uri} has flavors {sorted(info.flavors)}; the platform serves the pipelines it logs "
                         "with the sklearn flavor")
    from mlflow import sklearn as mlflow_sklearn

    names, types, output = [], [], "string"
    if info.signature is not None:
        names = info.signature.inputs.input_names()
        types = [str(getattr(t, "name", t)) for t in info.signature.inputs.input_types()]
        outputs = info.signature.outputs.inputs if info.signature.outputs else []
        output = _mlflow_type(outputs[0]) if outputs else output
    model = mlflow_sklearn.load_model(model_uri)
    return LoadedModel(name="", version="", model=model, feature_names=names, feature_types=types, output_type=output,
                       flavor=_framework(model))


def _framework(model: Model) -> str:
    """What computes the predictions, for the V2 metadata's `platform`: sklearn, pytorch, xgboost, lightgbm, ..."""
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    if isinstance(final, EncodedLabels):
        final = final.estimator
    module = type(final).__module__
    return "pytorch" if module.startswith("mlops_platform.core.torch_training") else module.partition(".")[0]


def _mlflow_type(spec) -> str:
    """The element type of a column or tensor spec, as MLflow names it (double, long, string, ...)."""
    import numpy as np

    kind = getattr(spec, "type", None)
    if isinstance(kind, np.dtype):  # a tensor spec: the predictions were an array
        return {"f": "double", "i": "long", "u": "long", "b": "boolean"}.get(kind.kind, "string")
    return getattr(kind, "name", "string")


def load_registered(client, name: str, *, alias: Alias | None = None, version: str | None = None) -> LoadedModel:
    """Load a registered model by alias or version through an `MlflowClient`; the version is resolved once so it is
    reported exactly."""
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias or version")
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias).version
    loaded = load_model_uri(f"models:/{name}/{version}")
    return dataclasses.replace(loaded, name=name, version=str(version))
