"""Other estimators through the scikit-learn API, each trained from a spec, logged to MLflow (SQLite in a temp dir) with
its data, loaded back the way the serving runtime loads it, and predicting exactly what it predicted before: XGBoost and
LightGBM (steps and a factory), a factory of any estimator, and a custom torch module trained by the platform's loop."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from mlops_platform.core import data, training
from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import ModelSpec
from mlops_platform.integrations.registry import MlflowRegistry, TrainingData
from tests.support import CHURN_FEATURES, churn_frame


class TwoLayer(nn.Module):
    """A user's own network: the platform constructs it with n_inputs and n_outputs and trains it."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int = 16):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(n_inputs, width), nn.Tanh(), nn.Linear(width, n_outputs))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def make_gbm_classifier(learning_rate: float = 0.1):
    """A factory: any callable returning a scikit-learn-compatible estimator."""
    from lightgbm import LGBMClassifier

    return LGBMClassifier(n_estimators=40, learning_rate=learning_rate, verbose=-1, random_state=0)


def churn_spec(estimator: dict, task: str | None = None) -> ModelSpec:
    return ModelSpec.model_validate({
        "name": "churn",
        "dataset": {"source": "s3://bucket/churn/*.parquet", "features": CHURN_FEATURES, "target": "churned",
                    "id_columns": ["customer_id"], **({"task": task} if task else {})},
        "estimator": estimator,
        "gate": {"metric": "roc_auc", "min_value": 0.6},
    })


def typed(spec: ModelSpec) -> pd.DataFrame:
    frame, report = data.validate_batch("churn.csv", churn_frame(600).to_csv(index=False).encode(), spec.dataset)
    assert frame is not None, report.problems
    return frame


ESTIMATORS = {
    "xgboost": {"steps": [{"class": "xgboost.XGBClassifier", "params": {"n_estimators": 30, "max_depth": 3}}]},
    "lightgbm": {"steps": [{"class": "lightgbm.LGBMClassifier", "params": {"n_estimators": 30, "verbose": -1}}]},
    "factory": {"factory": "tests.integrations.test_estimators:make_gbm_classifier", "factory_params": {"learning_rate": 0.2}},
    "torch_module": {"framework": "torch", "torch": {"module": "tests.integrations.test_estimators.TwoLayer",
                                                     "module_params": {"width": 8}, "epochs": 20}},
}


@pytest.mark.parametrize("kind", sorted(ESTIMATORS))
def test_estimator_trains_logs_and_loads_back_predicting_the_same(tmp_path, kind):
    spec = churn_spec(ESTIMATORS[kind])
    frame = typed(spec)
    task, _ = data.resolve_task(frame[spec.dataset.target], spec.dataset)
    assert task == Task.BINARY
    model = training.train(spec, task, frame)
    x = data.model_input(frame.head(50), spec.dataset)
    labels, proba = training.predict(model, x)
    assert set(labels) <= {"yes", "no"} and proba.shape == (50, 2)

    registry = MlflowRegistry(f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"))
    batches = [{"name": "churn.csv", "origin": "landing", "uri": str(tmp_path / "churn.csv"), "sha256": "0" * 64,
                "token": "t", "rows": len(frame)}]
    run = registry.log_training(spec, model, TrainingData(batches, "v1", frame), params=training.hyperparameters(spec),
                                metrics={"roc_auc": 0.9}, tags={}, images={}, documents={})
    version = registry.register(spec, run, tags={})
    loaded = registry.load(spec.registered_name, version)
    again, again_proba = training.predict(loaded, x)
    np.testing.assert_array_equal(again, labels)
    np.testing.assert_allclose(again_proba, proba)
    assert registry.trained_batches(spec.registered_name, version)[0]["name"] == "churn.csv"


def test_a_custom_torch_regressor_learns_a_linear_target(tmp_path):
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(rng.normal(size=(800, 3)), columns=["a", "b", "c"])
    frame["y"] = 3 * frame["a"] - 2 * frame["b"] + 10 + rng.normal(scale=0.1, size=800)
    spec = ModelSpec.model_validate({
        "name": "linear", "dataset": {"source": "s3://b/x.csv", "features": ["a", "b", "c"], "target": "y"},
        "estimator": {"framework": "torch", "torch": {"module": "tests.integrations.test_estimators.TwoLayer",
                                                      "epochs": 200, "learning_rate": 0.01, "patience": 20}},
        "gate": {"metric": "r2", "min_value": 0.5}})
    task, classes = data.resolve_task(frame["y"], spec.dataset)
    assert task == Task.REGRESSION and classes is None
    model = training.train(spec, task, frame)
    predictions, proba = training.predict(model, data.model_input(frame, spec.dataset))
    assert proba is None
    assert np.corrcoef(predictions, frame["y"])[0, 1] > 0.98
    assert abs(predictions.mean() - frame["y"].mean()) < 0.5, "predictions come back in the target's own units"
