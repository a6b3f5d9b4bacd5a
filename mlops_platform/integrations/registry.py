"""The model registry: MLflow tracking, registered versions, the aliases the platform moves, and model logging per
framework. Loading a registered version back as a platform classifier lives here too, for the serving runtime."""

from __future__ import annotations

import io
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import pandas as pd

from mlops_platform.core.spec import ModelSpec
from mlops_platform.core.training import Classifier, feature_matrix, predict_labels


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
class LoadedModel:
    """A registered version loaded as a classifier, with what the registry knows about it."""

    name: str
    version: str
    classifier: Classifier
    feature_names: list[str]
    flavor: str


class ModelRegistry(ABC):
    """Where trained models are tracked, versioned and aliased."""

    @abstractmethod
    def log_training(self, spec: ModelSpec, model: Classifier, example: pd.DataFrame, params: dict,
                     metrics: dict[str, float], tags: dict[str, str], images: dict[str, bytes],
                     documents: dict[str, dict]) -> LoggedRun:
        """One tracked run: parameters, holdout metrics, images, documents and the model with its signature."""

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
    def load(self, name: str, version: str) -> Classifier:
        """A registered version as a classifier."""

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

        return MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.registry_uri)

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

    def log_training(self, spec: ModelSpec, model: Classifier, example: pd.DataFrame, params: dict,
                     metrics: dict[str, float], tags: dict[str, str], images: dict[str, bytes],
                     documents: dict[str, dict]) -> LoggedRun:
        import mlflow
        from mlflow.models import infer_signature

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

    def load(self, name: str, version: str) -> Classifier:
        with self._active():
            return load_registered(self.client(), name, version=version).classifier

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


def _png(content: bytes):
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


def load_model_uri(model_uri: str) -> tuple[Classifier, list[str], str]:
    """The classifier at an MLflow model URI, its input column names and its flavor."""
    import mlflow

    info = mlflow.models.get_model_info(model_uri)
    feature_names = info.signature.inputs.input_names() if info.signature else []
    if "pytorch" in info.flavors:
        from mlflow import pytorch as mlflow_pytorch

        from mlops_platform.core.torch_training import TorchClassifier

        return TorchClassifier.from_logged(mlflow_pytorch.load_model(model_uri)), feature_names, "pytorch"
    if "sklearn" in info.flavors:
        from mlflow import sklearn as mlflow_sklearn

        return mlflow_sklearn.load_model(model_uri), feature_names, "sklearn"
    raise ValueError(f"{model_uri} has flavors {sorted(info.flavors)}; the platform serves sklearn and pytorch")


def load_registered(client, name: str, *, alias: Alias | None = None, version: str | None = None) -> LoadedModel:
    """Load a registered model by alias or version through an `MlflowClient`; the version is resolved once so it is
    reported exactly."""
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias or version")
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias).version
    classifier, features, flavor = load_model_uri(f"models:/{name}/{version}")
    return LoadedModel(name=name, version=str(version), classifier=classifier, feature_names=features, flavor=flavor)
