"""The model spec: one declaration per model, from which the platform builds everything else."""

from __future__ import annotations

import difflib
import glob
import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mlops_platform.core import metrics as metric_table
from mlops_platform.core import objects
from mlops_platform.core.canary import CanaryThresholds, SloThresholds
from mlops_platform.core.metrics import Task

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "examples" / "models"
MODELS_DIR_ENV = "MLOPS_MODELS_DIR"

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureType(StrEnum):
    """How a column is validated, preprocessed and served."""

    NUMERIC = "numeric"
    CATEGORICAL = "categorical"
    BOOLEAN = "boolean"
    DATETIME = "datetime"  # split into numeric parts (year, month, day, weekday, hour) before training


class FeatureSpec(_Strict):
    """One feature column. In a spec a bare name stands for a numeric feature without nulls."""

    name: str
    type: FeatureType = FeatureType.NUMERIC
    nullable: bool = Field(False, description="Nulls are imputed (median, or a 'missing' category) instead of "
                           "quarantining the batch.")
    categories: list[str | int | bool] | None = Field(None, description=(
        "The values a categorical feature may take; a batch with another value is quarantined. Left out, any value is "
        "accepted and values unseen in training are encoded as 'unknown' when served."))

    @model_validator(mode="after")
    def _categories_for_categorical(self) -> FeatureSpec:
        if self.categories is not None and self.type != FeatureType.CATEGORICAL:
            raise ValueError(f"feature {self.name!r}: categories are only for categorical features")
        return self


def _local_path(uri: str) -> str | None:
    """The local path a source URI names, or None for object stores and other remote filesystems."""
    if uri.startswith("file://"):
        return uri[len("file://"):]
    return None if "://" in uri else uri


class DatasetSpec(_Strict):
    """Where the data comes from and what its columns are."""

    source: str = Field(description=(
        "The model's data: an fsspec path or glob of CSV or Parquet files (a local path relative to the spec file, "
        "'s3://bucket/prefix/*.parquet', 'gs://…', 'abfss://…'), read in place and never moved; or a data set bundled "
        "with scikit-learn ('sklearn:NAME'), which `cli seed` cuts into landing batches for the demo."))
    features: list[FeatureSpec]
    target: str
    task: Task | None = Field(None, description="binary, multiclass or regression; inferred from the target when left out.")
    classes: list[int | str | bool] | None = Field(None, description=(
        "The labels the target may take. A batch with any other label is quarantined with that reason; to train on a "
        "new class, add it here."))
    max_classes: int = Field(20, ge=2, description=(
        "An integer target with at most this many distinct values is taken as classes when the task is inferred; a "
        "declared classification task with more is refused."))
    id_columns: list[str] = Field(default_factory=list, description="Row identifiers: allowed in batches, never trained on.")
    ignore_columns: list[str] = Field(default_factory=list, description="Other columns batches may carry; not trained on.")
    holdout_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    seed: int = 42

    @field_validator("features", mode="before")
    @classmethod
    def _bare_names_are_numeric(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"name": v} if isinstance(v, str) else v for v in value]
        return value

    @model_validator(mode="after")
    def _consistent(self) -> DatasetSpec:
        names = self.feature_names
        if not names:
            raise ValueError("dataset.features: declare at least one feature")
        if self.target in names:
            raise ValueError(f"dataset.target: {self.target!r} is also listed as a feature")
        every = [*names, self.target, *self.id_columns, *self.ignore_columns]
        repeated = sorted({c for c in every if every.count(c) > 1})
        if repeated:
            raise ValueError(f"dataset: columns {repeated} are declared more than once (features, target, id, ignore)")
        if self.classes is not None:
            if self.task == Task.REGRESSION:
                raise ValueError("dataset.classes: a regression target has no classes; remove them or change dataset.task")
            if self.task == Task.BINARY and len(set(map(str, self.classes))) != 2:
                raise ValueError(f"dataset.classes: a binary task needs exactly 2 classes, got {self.classes}")
        return self

    @property
    def feature_names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        """What training reads: the features and the target."""
        return [*self.feature_names, self.target]

    @property
    def allowed_columns(self) -> list[str]:
        """What a batch may carry."""
        return [*self.columns, *self.id_columns, *self.ignore_columns]

    @property
    def declared_task(self) -> Task | None:
        """The task the spec fixes: stated, or implied by its classes; None when the data decides."""
        if self.task is not None:
            return self.task
        if self.classes is not None:
            return Task.BINARY if len(self.classes) == 2 else Task.MULTICLASS
        return None

    @property
    def bundled(self) -> bool:
        return self.source.startswith("sklearn:")

    @property
    def all_numeric(self) -> bool:
        return all(f.type == FeatureType.NUMERIC for f in self.features)

    def local_files(self) -> list[Path] | None:
        """The files a local source matches, sorted; None for bundled and remote sources."""
        path = None if self.bundled else _local_path(self.source)
        if path is None:
            return None
        return sorted(p for p in map(Path, glob.glob(path, recursive=True)) if p.is_file())


class StepSpec(_Strict):
    """One scikit-learn estimator or transformer, by import path. Params may hold declarations of their own,
    `{class: ..., params: {...}}`, for nested estimators and transformers."""

    cls: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _imports(self) -> StepSpec:
        objects.check_params(objects.import_path(self.cls), self.params, self.cls)
        return self


class TorchSpec(_Strict):
    """A PyTorch network and its training loop settings. The network is the platform's MLP, or `module`: any
    `torch.nn.Module` by import path, constructed as `Module(n_inputs=..., n_outputs=..., **module_params)`."""

    module: str | None = None
    module_params: dict[str, Any] = Field(default_factory=dict)
    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = 0.1
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    mixed_precision: bool = True

    @model_validator(mode="after")
    def _module_imports(self) -> TorchSpec:
        if self.module is None:
            if self.module_params:
                raise ValueError("estimator.torch.module_params: only for a custom module")
            return self
        import torch  # only a spec with a custom module pays for importing torch at load

        module = objects.import_path(self.module)
        if not (isinstance(module, type) and issubclass(module, torch.nn.Module)):
            raise ValueError(f"estimator.torch.module: {self.module!r} is not a torch.nn.Module subclass")
        names, open_ended = objects.accepted_params(module)
        if not open_ended and not {"n_inputs", "n_outputs"} <= names:
            raise ValueError(f"estimator.torch.module: {self.module!r} must take n_inputs and n_outputs")
        objects.check_params(module, {**self.module_params, "n_inputs": 1, "n_outputs": 1}, self.module)
        return self


_SCALE_FREE_MODULES = ("sklearn.tree", "sklearn.ensemble", "xgboost", "lightgbm")


class EstimatorSpec(_Strict):
    """How the model is trained: a scikit-learn pipeline, a factory returning any scikit-learn-compatible estimator
    (XGBoost and LightGBM included), or a PyTorch network. Preprocessing is derived from the feature types unless
    `preprocessing: none`, in which case the steps get the raw columns."""

    framework: Literal["sklearn", "torch"] = "sklearn"
    steps: list[StepSpec] = Field(default_factory=list)
    factory: str | None = Field(None, description="'package.module:function' returning an estimator.")
    factory_params: dict[str, Any] = Field(default_factory=dict)
    preprocessing: Literal["auto", "none"] = "auto"
    torch: TorchSpec | None = None

    @model_validator(mode="after")
    def _matches_framework(self) -> EstimatorSpec:
        if self.framework == "sklearn":
            if bool(self.steps) == bool(self.factory):
                raise ValueError("estimator: give either steps or a factory")
            if self.torch is not None:
                raise ValueError("estimator.torch: only for framework: torch")
        else:
            if self.steps or self.factory:
                raise ValueError("estimator: a torch estimator takes no steps or factory; configure estimator.torch")
            if self.torch is None:
                object.__setattr__(self, "torch", TorchSpec())
        if self.factory:
            function = objects.import_path(self.factory)
            if not callable(function):
                raise ValueError(f"estimator.factory: {self.factory!r} is not callable")
            objects.check_params(function, self.factory_params, self.factory)
        elif self.factory_params:
            raise ValueError("estimator.factory_params: only with a factory")
        return self

    def final_class(self) -> type | None:
        """The class of the last step, when steps declare it (a factory's is known only once called)."""
        return objects.import_path(self.steps[-1].cls) if self.steps else None

    @property
    def needs_scaling(self) -> bool:
        """Tree models are indifferent to scale and the platform's networks standardize their own inputs; every
        other estimator gets scaled numeric features."""
        if self.framework == "torch":
            return False
        module = self.steps[-1].cls if self.steps else (self.factory or "")
        return not module.startswith(_SCALE_FREE_MODULES)


class GateSpec(_Strict):
    """The quality gate a challenger must pass to become champion: a bound in the metric's direction (`min_value` when
    higher is better, `max_value` when lower is), and no regression against the champion beyond `max_regression`."""

    metric: str = "f1"
    min_value: float | None = None
    max_value: float | None = None
    max_regression: float = Field(0.01, ge=0.0)

    @model_validator(mode="after")
    def _direction(self) -> GateSpec:
        known = metric_table.METRICS.get(self.metric)
        if known is None:
            raise ValueError(f"gate.metric: unknown metric {self.metric!r}; known: {sorted(metric_table.METRICS)}")
        right, wrong = ("min_value", "max_value") if known.higher_is_better else ("max_value", "min_value")
        if getattr(self, wrong) is not None:
            raise ValueError(f"gate.{wrong}: {self.metric} is {known.direction}, so its gate is gate.{right}")
        if getattr(self, right) is None:
            raise ValueError(f"gate.{right}: {self.metric} is {known.direction}; give the bound a challenger must meet")
        return self

    @property
    def bound(self) -> float:
        return self.min_value if self.min_value is not None else self.max_value


class BatchingSpec(_Strict):
    """Adaptive batching of a model's requests, per revision (see `mlops_platform/serving/batching.py`)."""

    enabled: bool = True
    max_batch_rows: int = Field(64, ge=1, le=100_000)
    max_delay_ms: float = Field(0.0, ge=0.0, le=1000.0, description="Wait this long for company; 0 batches only "
                                "what arrives while the revision is busy, adding no latency.")
    max_queue_rows: int = Field(8192, ge=1, description="Rows waiting per revision before requests get 503.")

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> BatchingSpec:
        if self.max_queue_rows < self.max_batch_rows:
            raise ValueError("max_queue_rows must be at least max_batch_rows")
        return self


class ServingSpec(_Strict):
    """How the champion is served."""

    name: str | None = None
    batching: BatchingSpec = Field(default_factory=BatchingSpec)

    @field_validator("name")
    @classmethod
    def _dns_label(cls, value: str | None) -> str | None:
        if value is not None and not _DNS_LABEL.match(value):
            raise ValueError(f"serving name {value!r} must be a DNS label (lower case, digits, '-')")
        return value


class CanarySpec(_Strict):
    """How a challenger that passed the quality gate is tried on live traffic before it becomes champion."""

    traffic_percent: int = Field(10, ge=1, le=50)
    min_requests: int = Field(50, ge=1)
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    max_error_rate_increase: float = Field(0.005, ge=0.0, le=1.0)
    max_latency_ratio: float = Field(2.0, gt=1.0)
    min_latency_increase_ms: float = Field(1.0, ge=0.0)
    window_seconds: float = Field(5.0, gt=0.0)
    max_window_seconds: float = Field(30.0, gt=0.0)
    replay_rps: float = Field(200.0, gt=0.0, description="Holdout rows replayed as traffic where there are no users (local).")
    lease_margin_seconds: float = Field(30.0, gt=0.0, description=(
        "A canary's lease lasts the analysis's longest window plus this; past it, with no verdict (the run died or was "
        "cancelled), the canary is rolled back without waiting for another run."))
    release_wait_seconds: float = Field(300.0, ge=0.0, description=(
        "How long a release waits for another release of the same model to finish before it fails with a message."))

    def thresholds(self, slo: SloSpec | None = None) -> CanaryThresholds:
        return CanaryThresholds(**self.model_dump(exclude={"traffic_percent", "replay_rps", "lease_margin_seconds",
                                                           "release_wait_seconds"}),
                                max_p95_ms=slo.max_p95_ms if slo else None)


class SloSpec(_Strict):
    """The service level a newly promoted champion must hold during its watch window, or be rolled back."""

    watch_seconds: float = Field(5.0, gt=0.0)
    min_requests: int = Field(20, ge=1)
    max_error_rate: float = Field(0.01, ge=0.0, le=1.0)
    max_p95_ms: float = Field(250.0, gt=0.0)

    def thresholds(self) -> SloThresholds:
        return SloThresholds(**self.model_dump())


class MonitoringSpec(_Strict):
    """What is watched once the model serves, and when drift or falling live quality starts a retrain."""

    capture_rate: float = Field(0.1, ge=0.0, le=1.0, description="Share of requests whose inputs and predictions are "
                                "captured (off the request path); 0 turns capture off.")
    report_cron: str = Field("0 * * * *", description="When the drift report is computed (UTC); also on demand.")
    window_hours: float = Field(24.0, gt=0.0, description="Captured rows younger than this are compared.")
    max_rows: int = Field(100_000, ge=100, description="At most this many of the newest captured rows are compared.")
    psi_threshold: float = Field(0.2, gt=0.0)
    p_value: float = Field(0.01, gt=0.0, lt=1.0)
    min_rows: int = Field(100, ge=10, description="Fewer captured rows than this give no drift verdict.")
    retrain_drift_share: float = Field(0.3, gt=0.0, le=1.0, description="Retrain when at least this share of the "
                                       "features drift (and enough new labelled data has landed).")
    quality: GateSpec | None = Field(None, description="The floor on live quality (accuracy or f1; mae or rmse), "
                                     "checked on labelled predictions: below it the check fails with ERROR and a "
                                     "retrain may start.")
    min_new_rows: int = Field(100, ge=1, description="Labelled rows new since the champion's data needed to retrain.")
    cooldown_minutes: float = Field(360.0, ge=0.0, description="No second drift-triggered retrain within this time.")

    @model_validator(mode="after")
    def _live_metric(self) -> MonitoringSpec:
        if self.quality is not None and self.quality.metric not in ("accuracy", "f1", "mae", "rmse"):
            raise ValueError(f"monitoring.quality.metric: live quality is accuracy, f1, mae or rmse, not {self.quality.metric}")
        return self


class AutomationSpec(_Strict):
    """When the model retrains on its own."""

    retrain_cron: str = "0 2 * * *"
    sensor_interval_seconds: int = 30


class ModelSpec(_Strict):
    """Everything the platform needs to know about one model."""

    name: str
    description: str = ""
    dataset: DatasetSpec
    estimator: EstimatorSpec
    metrics: list[str] | None = Field(None, description="Reported on the holdout; the task's usual ones when left out.")
    gate: GateSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    automation: AutomationSpec = Field(default_factory=AutomationSpec)
    monitoring: MonitoringSpec = Field(default_factory=MonitoringSpec)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"model name {value!r} must be lower case letters, digits and '_'")
        return value

    @model_validator(mode="after")
    def _fits_together(self) -> ModelSpec:
        for name in self.metrics or []:
            if name not in metric_table.METRICS:
                raise ValueError(f"metrics: unknown metric {name!r}; known: {sorted(metric_table.METRICS)}")
        task = self.dataset.declared_task
        gate_tasks = metric_table.METRICS[self.gate.metric].tasks
        if task is not None and task not in gate_tasks:
            raise ValueError(f"gate.metric: {self.gate.metric} is not a {task} metric; "
                             f"{task} has {metric_table.metrics_for(task)}")
        for name in self.metrics or []:
            if not metric_table.METRICS[name].tasks & gate_tasks or (task is not None and task not in metric_table.METRICS[name].tasks):
                raise ValueError(f"metrics: {name} does not apply to the same task as gate.metric {self.gate.metric}")
        final = self.estimator.final_class()
        if final is not None and task is not None:
            from sklearn.base import ClassifierMixin, RegressorMixin

            if task.is_classification and issubclass(final, RegressorMixin):
                raise ValueError(f"estimator.steps: {final.__name__} is a regressor, but the task is {task}")
            if task == Task.REGRESSION and issubclass(final, ClassifierMixin):
                raise ValueError(f"estimator.steps: {final.__name__} is a classifier, but the task is regression")
        self._check_source()
        return self

    def _check_source(self) -> None:
        source = self.dataset.source
        if self.dataset.bundled:
            from sklearn import datasets

            if not hasattr(datasets, f"load_{source.partition(':')[2]}"):
                raise ValueError(f"dataset.source: scikit-learn bundles no data set {source!r}")
            return
        files = self.dataset.local_files()
        if files is None:  # a bucket: checked when the run reads it
            return
        if not files:
            raise ValueError(f"dataset.source: no file matches {source!r}")
        first = files[0]
        try:
            columns = read_columns(first)
        except Exception as exc:  # unreadable is the user's file's problem: say which and why
            raise ValueError(f"dataset.source: cannot read the columns of {first}: {exc}") from None
        for field, names in (("dataset.features", self.dataset.feature_names), ("dataset.target", [self.dataset.target]),
                             ("dataset.id_columns", self.dataset.id_columns)):
            missing = [n for n in names if n not in columns]
            if missing:
                hints = [f"{m!r} (did you mean {near[0]!r}?)" if (near := difflib.get_close_matches(m, columns, n=1))
                         else repr(m) for m in missing]
                raise ValueError(f"{field}: {', '.join(hints)} not among the columns of {first}: {columns}")

    def metrics_for(self, task: Task) -> list[str]:
        """The metrics reported for the task the data turned out to be, the gate's always among them."""
        names = list(self.metrics) if self.metrics else list(metric_table.DEFAULT_METRICS[task])
        return names if self.gate.metric in names else [*names, self.gate.metric]

    @property
    def registered_name(self) -> str:
        """The one external name: MLflow registered model and KServe endpoint alike."""
        return self.serving.name or self.name.replace("_", "-")


def read_columns(path: Path) -> list[str]:
    """The column names of a CSV or Parquet file, read without its rows."""
    import pandas as pd

    if str(path).endswith(".parquet"):
        import pyarrow.parquet as pq

        return list(pq.read_schema(path).names)
    return list(pd.read_csv(path, nrows=0).columns)


SPEC_SUFFIXES = (".yaml", ".yml")


@dataclass(frozen=True)
class SpecError:
    """A spec file that could not be loaded, and every reason why, each naming its field."""

    path: Path
    problems: tuple[str, ...]

    @property
    def model_name(self) -> str:
        """What the broken model is shown as: the file's stem as an identifier."""
        return re.sub(r"[^a-z0-9_]", "_", self.path.stem.lower()) or "spec"

    def __str__(self) -> str:
        return f"{self.path}: " + "; ".join(self.problems)


class SpecLoadError(ValueError):
    def __init__(self, errors: list[SpecError]):
        self.errors = errors
        super().__init__("\n".join(str(e) for e in errors))


def _problems(exc: ValidationError) -> tuple[str, ...]:
    out = []
    for error in exc.errors():
        message = error["msg"].removeprefix("Value error, ")
        where = ".".join(str(p) for p in error["loc"])
        out.append(f"{where}: {message}" if where and not message.startswith(f"{where}:") else message)
    return tuple(out)


def load_spec(path: Path) -> ModelSpec:
    """One spec file; a local `dataset.source` is taken relative to the file's folder. Raises `SpecLoadError`."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise SpecLoadError([SpecError(path, (f"not readable as YAML: {exc}",))]) from None
    if not isinstance(raw, dict):
        raise SpecLoadError([SpecError(path, ("a spec is a YAML mapping with name, dataset, estimator and gate",))])
    dataset = raw.get("dataset")
    if isinstance(dataset, dict) and isinstance(dataset.get("source"), str):
        local = _local_path(dataset["source"])
        if local is not None and not dataset["source"].startswith("sklearn:") and not os.path.isabs(local):
            raw = {**raw, "dataset": {**dataset, "source": os.path.normpath(path.parent / local)}}
    try:
        return ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecLoadError([SpecError(path, _problems(exc))]) from None
    except objects.DeclarationError as exc:
        raise SpecLoadError([SpecError(path, (str(exc),))]) from None


@dataclass(frozen=True)
class SpecSet:
    """What a models folder declared: the specs that loaded and the files that did not."""

    specs: list[ModelSpec]
    errors: list[SpecError]


def models_dir(folder: Path | str | None = None) -> Path:
    return Path(folder or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR)


def load_models(folder: Path | str | None = None) -> SpecSet:
    """Every `*.yaml` and `*.yml` spec in the models folder, sorted by name. A broken file, or a second file declaring
    a name already taken, is reported and does not stop the others from loading."""
    folder = models_dir(folder)
    specs: dict[str, tuple[Path, ModelSpec]] = {}
    errors: list[SpecError] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix in SPEC_SUFFIXES and p.is_file()):
        try:
            spec = load_spec(path)
        except SpecLoadError as exc:
            errors.extend(exc.errors)
            continue
        if spec.name in specs:
            errors.append(SpecError(path, (f"name: model {spec.name!r} is already declared in {specs[spec.name][0]}",)))
            continue
        specs[spec.name] = (path, spec)
    return SpecSet([spec for _, spec in sorted(specs.values(), key=lambda item: item[1].name)], errors)


def load_specs(folder: Path | str | None = None) -> list[ModelSpec]:
    """Every spec in the models folder; raises `SpecLoadError` naming each broken file."""
    loaded = load_models(folder)
    if loaded.errors:
        raise SpecLoadError(loaded.errors)
    return loaded.specs
