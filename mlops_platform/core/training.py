"""Training: turn a spec and a training frame into one fitted scikit-learn pipeline: preprocessing derived from the
feature types, then the declared estimator (steps, a factory, or a PyTorch network).

Every trained model takes the features in the spec's order (`data.model_input`) and has `predict`; classifiers also
have `predict_proba` and `classes_`."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

from mlops_platform.core import objects
from mlops_platform.core.data import model_input
from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import DatasetSpec, FeatureType, ModelSpec

MAX_ONE_HOT = 50  # rarer categories than the 50 most frequent share one "infrequent" column


class Model(Protocol):
    """What the platform needs of a trained model, whatever framework trained it."""

    def predict(self, features: np.ndarray) -> np.ndarray: ...


def is_classifier(model: Any) -> bool:
    return hasattr(model, "predict_proba") and hasattr(model, "classes_")


def labels_from_proba(classes: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """The most probable class of each row: the one place probabilities become labels."""
    return np.asarray(classes)[np.argmax(proba, axis=1)]


def predict(model: Model, features: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (labels or values) and, for a classifier, the class probabilities behind them."""
    if is_classifier(model):
        proba = model.predict_proba(features)
        return labels_from_proba(model.classes_, proba), proba
    return np.asarray(model.predict(features)), None


def datetime_parts(values: np.ndarray) -> np.ndarray:
    """Year, month, day, weekday and hour of each value (datetimes or ISO text), as numbers."""
    stamps = pd.to_datetime(pd.Series(np.asarray(values).reshape(-1)), errors="coerce", utc=True, format="mixed")
    parts = [stamps.dt.year, stamps.dt.month, stamps.dt.day, stamps.dt.dayofweek, stamps.dt.hour]
    return np.column_stack([p.to_numpy(dtype=float, na_value=np.nan) for p in parts])


MISSING = "__missing__"


def _as_text(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    return np.where(pd.isna(values), MISSING, values.astype(str))


def _as_float(values: np.ndarray) -> np.ndarray:
    return np.asarray(values, dtype=float)


def preprocessing(spec: DatasetSpec, scale: bool) -> list[tuple[str, Any]]:
    """Pipeline steps derived from the feature types: nulls imputed where a feature may have them, categories one-hot
    encoded (unseen ones ignored), booleans as 0/1, datetimes as their numeric parts, and numbers scaled when the
    estimator is sensitive to scale. Columns are picked by position, so the model takes plain arrays."""
    features = spec.features
    if spec.all_numeric:
        steps = []
        if any(f.nullable for f in features):
            steps.append(("impute", SimpleImputer(strategy="median")))
        if scale:
            steps.append(("scale", StandardScaler()))
        return steps
    numeric = [i for i, f in enumerate(features) if f.type == FeatureType.NUMERIC]
    parts = []
    if numeric:
        numeric_steps = [FunctionTransformer(_as_float), SimpleImputer(strategy="median")]
        parts.append(("numeric", make_pipeline(*numeric_steps, *([StandardScaler()] if scale else [])), numeric))
    for i, feature in enumerate(features):
        if feature.type == FeatureType.CATEGORICAL:
            categories = "auto" if feature.categories is None else [sorted(str(c) for c in feature.categories)]
            encoder = OneHotEncoder(categories=categories, handle_unknown="infrequent_if_exist" if categories == "auto"
                                    else "ignore", max_categories=MAX_ONE_HOT if categories == "auto" else None,
                                    sparse_output=False)
            parts.append((feature.name, make_pipeline(FunctionTransformer(_as_text), encoder), [i]))
        elif feature.type == FeatureType.BOOLEAN:
            parts.append((feature.name, make_pipeline(FunctionTransformer(_as_float),
                                                      SimpleImputer(strategy="most_frequent")), [i]))
        elif feature.type == FeatureType.DATETIME:
            steps = [FunctionTransformer(datetime_parts), SimpleImputer(strategy="median")]
            parts.append((feature.name, make_pipeline(*steps, *([StandardScaler()] if scale else [])), [i]))
    return [("prepare", ColumnTransformer(parts, sparse_threshold=0.0))]


def estimator(spec: ModelSpec, task: Task) -> Any:
    """The declared estimator, unfitted."""
    declared = spec.estimator
    if declared.framework == "torch":
        from mlops_platform.core.torch_training import TorchClassifier, TorchRegressor

        cls = TorchRegressor if task == Task.REGRESSION else TorchClassifier
        return cls(settings=declared.torch.model_dump(), seed=spec.dataset.seed)
    if declared.factory:
        return objects.build(declared.factory, declared.factory_params)
    steps = [(f"{i}_{s.cls.rpartition('.')[2].lower()}", objects.build(s.cls, s.params)) for i, s in enumerate(declared.steps)]
    return steps[0][1] if len(steps) == 1 else Pipeline(steps)


class EncodedLabels(ClassifierMixin, BaseEstimator):
    """A classifier fitted on label indices 0..K-1 and answering in the labels themselves: XGBoost, for one, takes
    no string labels, and users' labels are often strings."""

    def __init__(self, estimator: Any = None):
        self.estimator = estimator

    def fit(self, features: np.ndarray, labels: np.ndarray) -> EncodedLabels:
        self.classes_, index = np.unique(labels, return_inverse=True)
        self.estimator.fit(features, index)
        return self

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(features)

    def predict(self, features: np.ndarray) -> np.ndarray:
        return labels_from_proba(self.classes_, self.predict_proba(features))


def build_pipeline(spec: ModelSpec, task: Task) -> Pipeline:
    prepare = preprocessing(spec.dataset, spec.estimator.needs_scaling) if spec.estimator.preprocessing == "auto" else []
    model = estimator(spec, task)
    if task.is_classification and not type(model).__module__.startswith(("sklearn.", "mlops_platform.")):
        model = EncodedLabels(model)
    return Pipeline([*prepare, ("model", model)])


def hyperparameters(spec: ModelSpec) -> dict[str, Any]:
    """Flat hyper-parameters for experiment tracking."""
    declared = spec.estimator
    if declared.framework == "torch":
        return {f"torch.{k}": v for k, v in declared.torch.model_dump().items()}
    if declared.factory:
        return {"factory": declared.factory, **{f"factory.{k}": v for k, v in declared.factory_params.items()}}
    params: dict[str, Any] = {}
    for i, step in enumerate(declared.steps):
        params[f"step{i}.class"] = step.cls
        params.update({f"step{i}.{k}": v for k, v in step.params.items()})
    return params


def train(spec: ModelSpec, task: Task, train_frame: pd.DataFrame) -> Pipeline:
    """Fit the spec's pipeline on the training rows."""
    target = train_frame[spec.dataset.target].to_numpy()
    if task == Task.REGRESSION:
        target = target.astype(float)
    return build_pipeline(spec, task).fit(model_input(train_frame, spec.dataset), target)
