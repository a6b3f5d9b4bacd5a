"""Data: bundled sources, landing batches, batch validation, the train/holdout split and reference statistics."""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn import datasets

from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import DatasetSpec, FeatureSpec, FeatureType

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


_TRUE, _FALSE = {"true", "1", "yes", "y", "t", "1.0"}, {"false", "0", "no", "n", "f", "0.0"}


def _examples(values: pd.Series, limit: int = 3) -> list:
    return [v.item() if hasattr(v, "item") else v for v in values.drop_duplicates().head(limit)]


def coerce_feature(column: pd.Series, feature: FeatureSpec) -> tuple[pd.Series, list[str]]:
    """The column as its declared type, and what is wrong with it (values that are not of that type, nulls in a
    column that may not have them, values outside a declared domain)."""
    problems: list[str] = []
    present = column.notna()
    name = feature.name
    if feature.type == FeatureType.NUMERIC:
        out = pd.to_numeric(column, errors="coerce") if not pd.api.types.is_numeric_dtype(column) else column
        if pd.api.types.is_bool_dtype(out):
            out = out.astype(float)
        bad = present & out.isna()
        if bad.any():
            problems.append(f"feature {name!r} is numeric but holds {_examples(column[bad])}")
        values = out.to_numpy(dtype=float, na_value=np.nan)
        infinite = int(np.isinf(values).sum())
        if infinite:
            problems.append(f"{infinite} infinite value(s) in feature {name!r}")
        out = out.astype(float)
    elif feature.type == FeatureType.CATEGORICAL:
        out = column.map(as_category, na_action="ignore").astype(object)
        if feature.categories is not None:
            allowed = {as_category(c) for c in feature.categories}
            unknown = sorted(set(out[present]) - allowed)
            if unknown:
                problems.append(f"feature {name!r} holds {unknown[:5]}, not among its declared categories {sorted(allowed)}")
    elif feature.type == FeatureType.BOOLEAN:
        if pd.api.types.is_bool_dtype(column):
            out = column.astype(object)
        else:
            text = column.map(lambda v: str(v).strip().lower(), na_action="ignore")
            out = text.map(lambda v: True if v in _TRUE else False if v in _FALSE else None, na_action="ignore")
            bad = present & out.isna()
            if bad.any():
                problems.append(f"feature {name!r} is boolean but holds {_examples(column[bad])}")
    else:
        out = pd.to_datetime(column, errors="coerce", utc=True, format="mixed")
        bad = present & out.isna()
        if bad.any():
            problems.append(f"feature {name!r} is a datetime but holds {_examples(column[bad])}")
        out = out.dt.tz_localize(None)
    nulls = int((~present).sum())
    if nulls and not feature.nullable:
        problems.append(f"{nulls} null value(s) in feature {name!r} (declare it nullable: true to impute them)")
    return out, problems


def as_category(value) -> str:
    """Categories are compared and served as text: 94110 in a CSV and "94110" in a request are the same value."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value)


def validate_batch(name: str, payload: bytes, spec: DatasetSpec) -> tuple[pd.DataFrame | None, BatchReport]:
    """Parse one landing batch and check each column against its declared type; never raises on bad data. The frame
    returned holds the features (as their types) and the target; id and ignored columns are dropped."""
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
    unexpected = [c for c in frame.columns if c not in spec.allowed_columns]
    if missing:
        report.problems.append(f"missing columns: {missing}")
    if unexpected:
        report.problems.append(f"unexpected columns: {unexpected} (declare them in dataset.id_columns or "
                               "dataset.ignore_columns to allow them)")
    if missing:
        return None, report
    out = pd.DataFrame(index=frame.index)
    for feature in spec.features:
        out[feature.name], problems = coerce_feature(frame[feature.name], feature)
        report.problems.extend(problems)
    target = frame[spec.target]
    target_nulls = int(target.isna().sum())
    if target_nulls:
        report.problems.append(f"{target_nulls} null value(s) in target column {spec.target!r}")
    if spec.declared_task == Task.REGRESSION and not pd.api.types.is_numeric_dtype(target):
        not_numbers = target[pd.to_numeric(target, errors="coerce").isna() & target.notna()]
        report.problems.append(f"target {spec.target!r} of a regression holds non-numbers {_examples(not_numbers)}")
    if spec.classes is not None and not target_nulls:
        unknown = sorted({str(v) for v in target.unique()} - {str(c) for c in spec.classes})
        if unknown:
            report.problems.append(f"labels {unknown} in {spec.target!r} are not among the declared classes "
                                   f"{[str(c) for c in spec.classes]}; to train on a new class, add it to dataset.classes")
    if report.problems:
        return None, report
    out[spec.target] = target
    return out.reset_index(drop=True), report


class TaskError(ValueError):
    """The target cannot be learnt as the declared (or any) task; the message says why and what to change."""


def resolve_task(target: pd.Series, spec: DatasetSpec) -> tuple[Task, list | None]:
    """The task, stated or inferred from the target, and its classes (sorted) for a classifier."""
    values = target.dropna()
    distinct = values.unique()
    numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
    integral = numeric and bool(np.all(np.mod(values.to_numpy(dtype=float), 1.0) == 0.0))
    task = spec.declared_task
    if task is None:
        if numeric and not integral or numeric and len(distinct) > spec.max_classes:
            task = Task.REGRESSION
        else:
            task = Task.BINARY if len(distinct) <= 2 else Task.MULTICLASS
    if task == Task.REGRESSION:
        if not numeric:
            raise TaskError(f"target {spec.target!r} holds text such as {_examples(values)}; a regression needs numbers")
        return task, None
    if numeric and not integral:
        fractional = values[np.mod(values.to_numpy(dtype=float), 1.0) != 0.0]
        raise TaskError(f"target {spec.target!r} is continuous (values such as {_examples(fractional)}); a {task} "
                        "classifier cannot learn it: set dataset.task: regression")
    if len(distinct) > spec.max_classes:
        raise TaskError(f"target {spec.target!r} has {len(distinct)} distinct values, more than dataset.max_classes="
                        f"{spec.max_classes} for a {task} task; if it is a quantity, set dataset.task: regression, "
                        "else raise max_classes")
    if task == Task.BINARY and len(distinct) > 2:
        raise TaskError(f"target {spec.target!r} has {len(distinct)} classes; a binary task needs 2: set task: multiclass")
    if len(distinct) < 2:
        raise TaskError(f"target {spec.target!r} has a single class {_examples(values)}; there is nothing to learn")
    classes = sorted(distinct.tolist(), key=str)
    return task, classes


def model_input(frame: pd.DataFrame, spec: DatasetSpec) -> np.ndarray:
    """What models are fitted and served on: the features in the spec's order, as a float matrix when all are numeric,
    else as an object matrix holding each column's typed values."""
    names = spec.feature_names
    if spec.all_numeric:
        return np.ascontiguousarray(frame[names].to_numpy(dtype=np.float64))
    return frame[names].to_numpy(dtype=object)


def json_rows(frame: pd.DataFrame, spec: DatasetSpec) -> list[dict]:
    """Rows as a V1 client sends them: objects keyed by feature, datetimes as ISO text."""
    out = frame[spec.feature_names].copy()
    for feature in spec.features:
        if feature.type == FeatureType.DATETIME:
            out[feature.name] = out[feature.name].map(lambda v: v.isoformat(), na_action="ignore")
    return [{k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()} for row in out.to_dict(orient="records")]


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
    hashes = pd.util.hash_pandas_object(frame[spec.feature_names], index=False).to_numpy()
    salted = (hashes ^ np.uint64(spec.seed)) % np.uint64(1_000_000)
    in_holdout = salted < np.uint64(round(spec.holdout_fraction * 1_000_000))
    return Split(train=frame[~in_holdout].reset_index(drop=True), holdout=frame[in_holdout].reset_index(drop=True))


def reference_statistics(frame: pd.DataFrame, spec: DatasetSpec, bins: int = 10) -> dict:
    """Per-feature summary of the training data, kept for later drift checks: decile edges and fractions for numeric
    features, value frequencies for the others."""
    features: dict[str, dict] = {}
    for feature in spec.features:
        column = frame[feature.name]
        if feature.type == FeatureType.NUMERIC:
            values = column.dropna().to_numpy(dtype=float)
            if not len(values):
                features[feature.name] = {"type": str(feature.type), "rows": 0}
                continue
            edges = np.unique(np.quantile(values, np.linspace(0.0, 1.0, bins + 1)))
            counts, _ = np.histogram(values, bins=edges)
            features[feature.name] = {
                "type": str(feature.type),
                "mean": float(values.mean()),
                "std": float(values.std()),
                "min": float(values.min()),
                "max": float(values.max()),
                "bin_edges": [float(e) for e in edges],
                "bin_fractions": [float(c) / len(values) for c in counts],
            }
        else:
            shown = column.dt.dayofweek if feature.type == FeatureType.DATETIME else column.astype(str)
            freq = shown.value_counts(normalize=True).head(50)
            features[feature.name] = {"type": str(feature.type), "frequencies": {str(k): float(v) for k, v in freq.items()}}
    target = frame[spec.target]
    if pd.api.types.is_float_dtype(target):
        distribution = {f"q{int(q * 100)}": float(target.quantile(q)) for q in (0.05, 0.25, 0.5, 0.75, 0.95)}
    else:
        distribution = {str(k): float(v) for k, v in target.value_counts(normalize=True).sort_index().items()}
    return {"rows": int(len(frame)), "features": features, "target_distribution": distribution}
