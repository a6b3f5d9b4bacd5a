"""Evaluation: metrics on the holdout, the confusion-matrix plot and the quality-gate decision."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm

from mlops_platform.core.spec import GateSpec
from mlops_platform.core.training import Classifier, labels_from_proba, predict_labels


def _binary(classes: np.ndarray) -> bool:
    return len(classes) == 2


def compute_metrics(names: list[str], y_true: np.ndarray, proba: np.ndarray, classes: np.ndarray) -> dict[str, float]:
    """The named metrics; binary problems score the second class as positive, others use macro averages."""
    y_pred = labels_from_proba(classes, proba)
    average = "binary" if _binary(classes) else "macro"
    pos = {"pos_label": classes[1]} if _binary(classes) else {}
    scorers = {
        "accuracy": lambda: skm.accuracy_score(y_true, y_pred),
        "f1": lambda: skm.f1_score(y_true, y_pred, average=average, **pos),
        "precision": lambda: skm.precision_score(y_true, y_pred, average=average, zero_division=0, **pos),
        "recall": lambda: skm.recall_score(y_true, y_pred, average=average, **pos),
        "roc_auc": lambda: (
            skm.roc_auc_score(y_true, proba[:, 1])
            if _binary(classes)
            else skm.roc_auc_score(y_true, proba, multi_class="ovr", labels=classes)
        ),
        "log_loss": lambda: skm.log_loss(y_true, proba, labels=classes),
    }
    unknown = [n for n in names if n not in scorers]
    if unknown:
        raise ValueError(f"unknown metrics {unknown}; known: {sorted(scorers)}")
    return {name: float(scorers[name]()) for name in names}


def evaluate(model: Classifier, features: np.ndarray, y_true: np.ndarray, names: list[str]) -> dict[str, float]:
    return compute_metrics(names, y_true, model.predict_proba(features), model.classes_)


def confusion_matrix_png(model: Classifier, features: np.ndarray, y_true: np.ndarray, title: str) -> bytes:
    """A PNG of the holdout confusion matrix."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_pred = predict_labels(model, features)
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    try:
        skm.ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=model.classes_, ax=ax, colorbar=False)
        ax.set_title(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return buffer.getvalue()


@dataclass(frozen=True)
class GateDecision:
    """Whether a challenger may become champion, and why."""

    passed: bool
    reason: str
    metric: str
    challenger: float
    champion: float | None

    def to_dict(self) -> dict:
        return asdict(self)


def gate_decision(gate: GateSpec, challenger: dict[str, float], champion: dict[str, float] | None) -> GateDecision:
    """Absolute threshold first, then no regression against the champion beyond the margin."""
    value = challenger[gate.metric]
    current = None if champion is None else champion[gate.metric]
    if value < gate.min_value:
        reason = f"{gate.metric}={value:.4f} is below the minimum {gate.min_value:.4f}"
        return GateDecision(False, reason, gate.metric, value, current)
    if current is not None and value < current - gate.max_regression:
        reason = (
            f"{gate.metric}={value:.4f} regresses against the champion's {current:.4f} "
            f"by more than {gate.max_regression:.4f}"
        )
        return GateDecision(False, reason, gate.metric, value, current)
    against = "no champion yet" if current is None else f"champion {current:.4f}"
    return GateDecision(True, f"{gate.metric}={value:.4f} ≥ {gate.min_value:.4f}; {against}", gate.metric, value, current)
