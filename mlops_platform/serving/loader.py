"""Loading a registered MLflow model as a platform classifier, whatever flavor it was logged with."""

from __future__ import annotations

from dataclasses import dataclass

import mlflow
from mlflow import MlflowClient

from mlops_platform.core.training import Classifier



@dataclass
class LoadedModel:
    """A classifier together with what the registry knows about it."""

    name: str
    version: str
    classifier: Classifier
    feature_names: list[str]
    flavor: str


def load_model_uri(model_uri: str) -> tuple[Classifier, list[str], str]:
    """The classifier at an MLflow model URI, its input column names and its flavor."""
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


def load_registered(client: MlflowClient, name: str, *, alias: str | None = None, version: str | None = None) -> LoadedModel:
    """Load a registered model by alias or version; the version is resolved once so it is reported exactly."""
    if (alias is None) == (version is None):
        raise ValueError("give exactly one of alias or version")
    if alias is not None:
        version = client.get_model_version_by_alias(name, alias).version
    classifier, features, flavor = load_model_uri(f"models:/{name}/{version}")
    return LoadedModel(name=name, version=str(version), classifier=classifier, feature_names=features, flavor=flavor)
