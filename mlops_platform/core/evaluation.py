"""Evaluation: metrics on the holdout, a diagnostic plot and the quality-gate decision, each in the metric's direction."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass

import numpy as np
from sklearn import metrics as skm

from mlops_platform.core.metrics import metric
from mlops_platform.core.spec import GateSpec
from mlops_platform.core.training import Model, predict


def compute_metrics(names: list[str], y_true: np.ndarray, y_pred: np.ndarray, proba: np.ndarray | None,
                    classes: np.ndarray | None) -> dict[str, float]:
    """The named metrics; binary problems score the second class as positive, others use macro averages."""
    out = {}
    for name in names:
        known = metric(name)
        if known.needs_proba and proba is None:
            raise ValueError(f"metric {name!r} needs class probabilities, which this model does not give")
        out[name] = float(known.compute(np.asarray(y_true), np.asarray(y_pred), proba, classes))
    return out


def evaluate(model: Model, features: np.ndarray, y_true: np.ndarray, names: list[str]) -> dict[str, float]:
    y_pred, proba = predict(model, features)
    return compute_metrics(names, y_true, y_pred, proba, getattr(model, "classes_", None) if proba is not None else None)


def diagnostic_png(model: Model, features: np.ndarray, y_true: np.ndarray, title: str) -> tuple[str, bytes]:
    """A classifier's holdout confusion matrix, or a regressor's predicted-against-actual scatter, as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    y_pred, proba = predict(model, features)
    fig, ax = plt.subplots(figsize=(4, 3.6), dpi=100)
    try:
        if proba is not None:
            name = "confusion_matrix"
            skm.ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=model.classes_, ax=ax, colorbar=False)
        else:
            name = "predicted_vs_actual"
            skm.PredictionErrorDisplay.from_predictions(y_true, y_pred, kind="actual_vs_predicted", ax=ax,
                                                        subsample=2000, random_state=0)
        ax.set_title(title)
        fig.tight_layout()
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png")
    finally:
        plt.close(fig)
    return name, buffer.getvalue()


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
    """The bound first, then no regression against the champion beyond the margin, both in the metric's direction."""
    name = gate.metric
    higher = metric(name).higher_is_better
    value = challenger[name]
    current = None if champion is None else champion[name]
    if not np.isfinite(value):
        return GateDecision(False, f"{name} is {value}: the challenger cannot be judged", name, value, current)
    if (value < gate.bound) if higher else (value > gate.bound):
        side = "below the minimum" if higher else "above the maximum"
        return GateDecision(False, f"{name}={value:.4f} is {side} {gate.bound:.4f}", name, value, current)
    if current is not None:
        worse_by = (current - value) if higher else (value - current)
        if worse_by > gate.max_regression:
            reason = (f"{name}={value:.4f} regresses against the champion's {current:.4f} by {worse_by:.4f}, more than "
                      f"{gate.max_regression:.4f} ({metric(name).direction})")
            return GateDecision(False, reason, name, value, current)
    against = "no champion yet" if current is None else f"champion {current:.4f}"
    relation = "≥" if higher else "≤"
    return GateDecision(True, f"{name}={value:.4f} {relation} {gate.bound:.4f}; {against}", name, value, current)
