"""The metrics a spec may name: which tasks each applies to, which direction is better, and how it is computed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from sklearn import metrics as skm


class Task(StrEnum):
    BINARY = "binary"
    MULTICLASS = "multiclass"
    REGRESSION = "regression"

    @property
    def is_classification(self) -> bool:
        return self != Task.REGRESSION


CLASSIFICATION = frozenset({Task.BINARY, Task.MULTICLASS})
REGRESSION = frozenset({Task.REGRESSION})


@dataclass(frozen=True)
class Metric:
    name: str
    tasks: frozenset[Task]
    higher_is_better: bool
    # (y_true, y_pred, proba or None, classes or None) -> value
    compute: Callable[[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray | None], float]
    needs_proba: bool = False

    @property
    def direction(self) -> str:
        return "higher is better" if self.higher_is_better else "lower is better"


def _averaged(fn, **fixed):
    def compute(y_true, y_pred, proba, classes):
        if len(classes) == 2:
            return fn(y_true, y_pred, average="binary", pos_label=classes[1], **fixed)
        return fn(y_true, y_pred, average="macro", **fixed)
    return compute


def _roc_auc(y_true, y_pred, proba, classes):
    if len(classes) == 2:
        return skm.roc_auc_score(y_true == classes[1], proba[:, 1])
    return skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("accuracy", CLASSIFICATION, True, lambda t, p, _, __: skm.accuracy_score(t, p)),
    Metric("balanced_accuracy", CLASSIFICATION, True, lambda t, p, _, __: skm.balanced_accuracy_score(t, p)),
    Metric("f1", CLASSIFICATION, True, _averaged(skm.f1_score, zero_division=0)),
    Metric("precision", CLASSIFICATION, True, _averaged(skm.precision_score, zero_division=0)),
    Metric("recall", CLASSIFICATION, True, _averaged(skm.recall_score, zero_division=0)),
    Metric("roc_auc", CLASSIFICATION, True, _roc_auc, needs_proba=True),
    Metric("log_loss", CLASSIFICATION, False, lambda t, _, proba, classes: skm.log_loss(t, proba, labels=classes),
           needs_proba=True),
    Metric("r2", REGRESSION, True, lambda t, p, _, __: skm.r2_score(t, p)),
    Metric("rmse", REGRESSION, False, lambda t, p, _, __: skm.root_mean_squared_error(t, p)),
    Metric("mae", REGRESSION, False, lambda t, p, _, __: skm.mean_absolute_error(t, p)),
    Metric("mape", REGRESSION, False, lambda t, p, _, __: skm.mean_absolute_percentage_error(t, p)),
]}

DEFAULT_METRICS: dict[Task, list[str]] = {
    Task.BINARY: ["accuracy", "f1", "roc_auc"],
    Task.MULTICLASS: ["accuracy", "f1"],
    Task.REGRESSION: ["r2", "rmse", "mae"],
}


def metric(name: str) -> Metric:
    try:
        return METRICS[name]
    except KeyError:
        raise ValueError(f"unknown metric {name!r}; known: {sorted(METRICS)}") from None


def metrics_for(task: Task) -> list[str]:
    return sorted(n for n, m in METRICS.items() if task in m.tasks)
