"""Training: turn a spec and a training frame into a fitted model with `predict_proba` and `classes_`."""

from __future__ import annotations

import importlib
from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.pipeline import Pipeline

from mlops_platform.core.spec import ModelSpec, StepSpec


class Classifier(Protocol):
    """What the platform needs of a trained model, whatever framework trained it."""

    classes_: np.ndarray

    def predict_proba(self, features: np.ndarray) -> np.ndarray: ...


def feature_matrix(frame: pd.DataFrame, features: list[str]) -> np.ndarray:
    """Models are fitted and served on plain float arrays in the spec's column order."""
    return np.ascontiguousarray(frame[features].to_numpy(dtype=np.float64))


def labels_from_proba(classes: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The most probable class of each row: the one place probabilities become labels."""
    return np.asarray(classes)[np.argmax(proba, axis=1)]


def predict_labels(model: Classifier, features: np.ndarray) -> np.ndarray:
    return labels_from_proba(model.classes_, model.predict_proba(features))


def _import(path: str) -> Any:
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{path!r} is not a dotted import path")
    return getattr(importlib.import_module(module), name)


def build_sklearn(steps: list[StepSpec]) -> Pipeline:
    return Pipeline([(f"{i}_{s.cls.rpartition('.')[2].lower()}", _import(s.cls)(**s.params)) for i, s in enumerate(steps)])


def hyperparameters(spec: ModelSpec) -> dict[str, Any]:
    """Flat hyper-parameters for experiment tracking."""
    if spec.estimator.framework == "torch":
        return {f"torch.{k}": v for k, v in spec.estimator.torch.model_dump().items()}
    params: dict[str, Any] = {}
    for i, step in enumerate(spec.estimator.steps):
        params[f"step{i}.class"] = step.cls
        params.update({f"step{i}.{k}": v for k, v in step.params.items()})
    return params


def train(spec: ModelSpec, train_frame: pd.DataFrame) -> Classifier:
    """Fit the spec's estimator on the training rows."""
    features = feature_matrix(train_frame, spec.dataset.features)
    target = train_frame[spec.dataset.target].to_numpy()
    if spec.estimator.framework == "torch":
        from mlops_platform.core.torch_training import train_torch  # torch is imported only when used

        return train_torch(spec, features, target)
    return build_sklearn(spec.estimator.steps).fit(features, target)
