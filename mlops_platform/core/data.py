"""Data: bundled sources, landing batches, batch validation, the train/holdout split and reference statistics."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn import datasets

from mlops_platform.core.spec import DatasetSpec

BATCH_SUFFIXES = (".csv", ".parquet")
MAX_BATCH_NAME = 128
_BATCH_NAME = re.compile(rf"^[A-Za-z0-9][A-Za-z0-9._-]{{0,{MAX_BATCH_NAME - 1}}}$")


def batch_name_problem(name: str) -> str | None:
    """Why a landing file's name cannot be taken as a batch name, or None: names end up in paths, run tags and
    quarantine keys, so they are short and plain."""
    if _BATCH_NAME.match(name):
        return None
    shown = name if len(name) <= 60 else f"{name[:40]}…({len(name)} characters)"
    return (f"batch name {shown!r} is not allowed: use at most {MAX_BATCH_NAME} letters, digits, '.', '_' or '-', "
            "starting with a letter or digit")


def column_name(raw: str) -> str:
    """Bundled data sets name columns like 'mean radius'; we store them as 'mean_radius'."""
    return re.sub(r"\W+", "_", str(raw).strip()).strip("_").lower()


def load_bundled(source: str) -> pd.DataFrame:
    """A data set that ships with scikit-learn ('sklearn:NAME'), as a frame with a 'target' column."""
    kind, _, name = source.partition(":")
    loader = getattr(datasets, f"load_{name}", None) if kind == "sklearn" else None
    if loader is None:
        raise ValueError(f"unknown bundled dataset source {source!r}; expected 'sklearn:NAME'")
    bunch = loader(as_frame=True)
    frame = bunch.frame.rename(columns=column_name)
    return frame


def bundled_batches(spec: DatasetSpec, n_batches: int = 3) -> list[pd.DataFrame]:
    """The bundled data set, shuffled and cut into landing batches with the spec's columns."""
    frame = load_bundled(spec.source)
    missing = [c for c in spec.columns if c not in frame.columns]
    if missing:
        raise ValueError(f"bundled source {spec.source!r} lacks the spec's columns {missing}")
    frame = frame[spec.columns].sample(frac=1.0, random_state=spec.seed).reset_index(drop=True)
    bounds = np.linspace(0, len(frame), n_batches + 1).round().astype(int)
    return [frame.iloc[a:b].reset_index(drop=True) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def encode_batch(frame: pd.DataFrame) -> bytes:
    return frame.to_csv(index=False).encode()


@dataclass
class BatchReport:
    """What validation found in one landing batch."""

    name: str
    rows: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def read_batch(name: str, payload: bytes) -> pd.DataFrame:
    if name.endswith(".parquet"):
        return pd.read_parquet(io.BytesIO(payload))
    return pd.read_csv(io.BytesIO(payload))


def validate_batch(name: str, payload: bytes, spec: DatasetSpec) -> tuple[pd.DataFrame | None, BatchReport]:
    """Parse one landing batch and check it against the spec's schema; never raises on bad data."""
    report = BatchReport(name=name)
    if not payload.strip():
        report.problems.append("file is empty")
        return None, report
    try:
        frame = read_batch(name, payload)
    except Exception as exc:  # any parser error means the file is unreadable, which is a data problem
        report.problems.append(f"unreadable file: {exc}")
        return None, report
    report.rows = len(frame)
    if frame.empty:
        report.problems.append("batch has a header but no rows")
    missing = [c for c in spec.columns if c not in frame.columns]
    unexpected = [c for c in frame.columns if c not in spec.columns]
    if missing:
        report.problems.append(f"missing columns: {missing}")
    if unexpected:
        report.problems.append(f"unexpected columns: {unexpected}")
    if missing:
        return None, report
    non_numeric = [c for c in spec.features if not pd.api.types.is_numeric_dtype(frame[c])]
    if non_numeric:
        report.problems.append(f"non-numeric feature columns: {non_numeric}")
    target_nulls = int(frame[spec.target].isna().sum())
    if target_nulls:
        report.problems.append(f"{target_nulls} null value(s) in target column {spec.target!r}")
    feature_nulls = {c: int(n) for c, n in frame[spec.features].isna().sum().items() if n}
    if feature_nulls:
        report.problems.append(f"null values in feature columns: {feature_nulls}")
    numeric = [c for c in spec.features if c not in non_numeric]
    counts = np.isinf(frame[numeric].to_numpy(dtype=float)).sum(axis=0) if numeric else []
    infinite = {c: int(n) for c, n in zip(numeric, counts, strict=True) if n}
    if infinite:
        report.problems.append(f"infinite values in feature columns: {infinite}")
    if spec.classes is not None and not target_nulls:
        unknown = sorted({str(v) for v in frame[spec.target].unique()} - {str(c) for c in spec.classes})
        if unknown:
            report.problems.append(f"labels {unknown} in {spec.target!r} are not among the declared classes "
                                   f"{[str(c) for c in spec.classes]}; to train on a new class, add it to dataset.classes")
    if report.problems:
        return None, report
    return frame[spec.columns], report


@dataclass
class Split:
    """The training rows and the holdout every candidate is judged on."""

    train: pd.DataFrame
    holdout: pd.DataFrame


def split_dataset(frame: pd.DataFrame, spec: DatasetSpec) -> Split:
    """Each row's holdout membership comes from a hash of its features, not from its position.

    As batches accumulate, a row never moves from holdout to training, so a champion is never judged on
    rows it was trained on, and challenger and champion are compared on the same rows.
    """
    hashes = pd.util.hash_pandas_object(frame[spec.features], index=False).to_numpy()
    salted = (hashes ^ np.uint64(spec.seed)) % np.uint64(1_000_000)
    in_holdout = salted < np.uint64(round(spec.holdout_fraction * 1_000_000))
    return Split(train=frame[~in_holdout].reset_index(drop=True), holdout=frame[in_holdout].reset_index(drop=True))


def reference_statistics(frame: pd.DataFrame, spec: DatasetSpec, bins: int = 10) -> dict:
    """Per-feature summary and decile edges of the training data, kept for later drift checks."""
    features = {}
    for column in spec.features:
        values = frame[column].to_numpy(dtype=float)
        edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
        counts, _ = np.histogram(values, bins=edges)
        features[column] = {
            "mean": float(values.mean()),
            "std": float(values.std()),
            "min": float(values.min()),
            "max": float(values.max()),
            "bin_edges": [float(e) for e in edges],
            "bin_fractions": [float(c) / len(values) for c in counts],
        }
    classes = frame[spec.target].value_counts(normalize=True).sort_index()
    return {
        "rows": int(len(frame)),
        "features": features,
        "target_distribution": {str(k): float(v) for k, v in classes.items()},
    }
