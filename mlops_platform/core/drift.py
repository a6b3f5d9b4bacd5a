"""Drift and live quality: live inputs and predictions against the champion's training data, with a test suited to
each column type, and labelled predictions scored with the task's metrics.

A feature drifts when its population stability index (PSI) reaches the threshold *and* its test rejects "same
distribution" (Kolmogorov-Smirnov for numbers, chi-square for categories, booleans and datetimes' weekdays): PSI says
the shift is large enough to matter, the test that it is not sampling noise. Numbers are binned by the reference's
deciles; categories by the reference's values plus one bin for values the reference never had.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
from scipy import stats

from mlops_platform.core.metrics import Task, metric
from mlops_platform.core.spec import DatasetSpec, FeatureType

EPSILON = 1e-4  # an empty bin counts as this fraction, so PSI stays finite
UNSEEN = "__unseen__"


@dataclass(frozen=True)
class DriftSettings:
    psi_threshold: float = 0.2
    p_value: float = 0.01
    min_rows: int = 100
    bins: int = 10


@dataclass(frozen=True)
class FeatureDrift:
    feature: str
    kind: str
    test: str
    psi: float
    p_value: float
    drifted: bool
    reference_fractions: dict[str, float]
    current_fractions: dict[str, float]


@dataclass
class DriftReport:
    rows: int
    reference_rows: int
    enough_rows: bool
    features: list[FeatureDrift] = field(default_factory=list)
    prediction: FeatureDrift | None = None
    quality: dict[str, float] = field(default_factory=dict)
    labelled_rows: int = 0

    @property
    def drifted(self) -> list[str]:
        return [f.feature for f in self.features if f.drifted]

    @property
    def share_drifted(self) -> float:
        return len(self.drifted) / len(self.features) if self.features else 0.0

    def to_dict(self) -> dict:
        return asdict(self) | {"drifted": self.drifted, "share_drifted": self.share_drifted}


def psi(reference: np.ndarray, current: np.ndarray) -> float:
    """Population stability index between two vectors of bin fractions."""
    ref = np.clip(reference, EPSILON, None)
    cur = np.clip(current, EPSILON, None)
    return float(np.sum((cur - ref) * np.log(cur / ref)))


def _numeric(name: str, ref: np.ndarray, cur: np.ndarray, settings: DriftSettings) -> FeatureDrift:
    ref, cur = ref[np.isfinite(ref)], cur[np.isfinite(cur)]
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, settings.bins + 1)))
    inner = edges[1:-1]  # open-ended outer bins: values beyond the reference's range land in them
    ref_counts = np.bincount(np.searchsorted(inner, ref, side="right"), minlength=len(inner) + 1)
    cur_counts = np.bincount(np.searchsorted(inner, cur, side="right"), minlength=len(inner) + 1)
    ref_frac, cur_frac = ref_counts / max(len(ref), 1), cur_counts / max(len(cur), 1)
    value = psi(ref_frac, cur_frac)
    p = float(stats.ks_2samp(ref, cur).pvalue) if len(ref) and len(cur) else 1.0
    labels = [f"<{inner[0]:.4g}" if i == 0 else f"≥{inner[i - 1]:.4g}" for i in range(len(inner) + 1)] if len(inner) else ["all"]
    return FeatureDrift(name, "numeric", "ks", value, p, value >= settings.psi_threshold and p < settings.p_value,
                        dict(zip(labels, ref_frac.round(4).tolist(), strict=True)),
                        dict(zip(labels, cur_frac.round(4).tolist(), strict=True)))


def _categorical(name: str, kind: str, ref: pd.Series, cur: pd.Series, settings: DriftSettings) -> FeatureDrift:
    ref, cur = ref.astype(str), cur.astype(str)
    categories = sorted(ref.unique().tolist())
    cur = cur.where(cur.isin(categories), UNSEEN)
    bins = [*categories, UNSEEN]
    ref_counts = ref.value_counts().reindex(bins, fill_value=0).to_numpy(dtype=float)
    cur_counts = cur.value_counts().reindex(bins, fill_value=0).to_numpy(dtype=float)
    ref_frac, cur_frac = ref_counts / max(ref_counts.sum(), 1), cur_counts / max(cur_counts.sum(), 1)
    value = psi(ref_frac, cur_frac)
    expected = np.clip(ref_frac, EPSILON, None)
    expected = expected / expected.sum() * cur_counts.sum()
    p = float(stats.chisquare(cur_counts, expected).pvalue) if cur_counts.sum() else 1.0
    return FeatureDrift(name, kind, "chi-square", value, p, value >= settings.psi_threshold and p < settings.p_value,
                        dict(zip(bins, ref_frac.round(4).tolist(), strict=True)),
                        dict(zip(bins, cur_frac.round(4).tolist(), strict=True)))


def _as_kind(values: pd.Series, kind: FeatureType) -> pd.Series:
    if kind == FeatureType.DATETIME:
        return pd.to_datetime(values, errors="coerce", utc=True, format="mixed").dt.dayofweek
    return values


def feature_drift(spec: DatasetSpec, reference: pd.DataFrame, current: pd.DataFrame,
                  settings: DriftSettings = DriftSettings()) -> list[FeatureDrift]:
    out = []
    for feature in spec.features:
        if feature.type == FeatureType.NUMERIC:
            out.append(_numeric(feature.name, pd.to_numeric(reference[feature.name], errors="coerce").to_numpy(dtype=float),
                                pd.to_numeric(current[feature.name], errors="coerce").to_numpy(dtype=float), settings))
        else:
            out.append(_categorical(feature.name, str(feature.type), _as_kind(reference[feature.name], feature.type),
                                    _as_kind(current[feature.name], feature.type), settings))
    return out


def prediction_drift(task: Task, reference_target: pd.Series, predictions: pd.Series,
                     settings: DriftSettings = DriftSettings()) -> FeatureDrift:
    """The predictions against the training target: the label mix for a classifier, the value spread for a regressor."""
    if task == Task.REGRESSION:
        return _numeric("prediction", reference_target.to_numpy(dtype=float), predictions.to_numpy(dtype=float), settings)
    return _categorical("prediction", "label", reference_target, predictions, settings)


def live_quality(task: Task, labelled: pd.DataFrame) -> dict[str, float]:
    """Metrics on predictions whose ground truth came back (`prediction`, `label` columns), per the task."""
    if labelled.empty:
        return {}
    y_true, y_pred = labelled["label"].to_numpy(), labelled["prediction"].to_numpy()
    if task == Task.REGRESSION:
        names, y_true, y_pred = ["mae", "rmse"], y_true.astype(float), y_pred.astype(float)
        classes = None
    else:
        names = ["accuracy", "f1"]
        y_true, y_pred = y_true.astype(str), y_pred.astype(str)
        classes = np.unique(np.concatenate([y_true, y_pred]))
        if len(classes) < 2:
            names = ["accuracy"]
    return {name: float(metric(name).compute(y_true, y_pred, None, classes)) for name in names}


def drift_report(spec: DatasetSpec, task: Task, reference: pd.DataFrame, current: pd.DataFrame,
                 labelled: pd.DataFrame | None = None, settings: DriftSettings = DriftSettings()) -> DriftReport:
    """`reference`: the champion's training rows (features and target); `current`: captured rows (features and
    `prediction`); `labelled`: captured predictions joined with their ground truth."""
    report = DriftReport(rows=len(current), reference_rows=len(reference), enough_rows=len(current) >= settings.min_rows)
    if report.enough_rows:
        report.features = feature_drift(spec, reference, current, settings)
        report.prediction = prediction_drift(task, reference[spec.target], current["prediction"], settings)
    if labelled is not None and not labelled.empty:
        report.labelled_rows = len(labelled)
        report.quality = live_quality(task, labelled)
    return report
