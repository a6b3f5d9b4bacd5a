"""The model spec: one declaration per model, from which the platform builds everything else."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from mlops_platform.core.canary import CanaryThresholds, SloThresholds

DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[2] / "examples" / "models"
MODELS_DIR_ENV = "MLOPS_MODELS_DIR"

_IDENTIFIER = re.compile(r"^[a-z][a-z0-9_]*$")
_DNS_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetSpec(_Strict):
    """Where the data comes from and what its columns are."""

    source: str = Field(description="Bundled data that seeds the landing folder, e.g. 'sklearn:breast_cancer'.")
    features: list[str]
    target: str
    holdout_fraction: float = Field(0.25, gt=0.0, lt=1.0)
    seed: int = 42
    classes: list[int | str] | None = Field(None, description=(
        "The labels the target may take. A batch with any other label is quarantined with that reason; to train on a "
        "new class, add it here."))

    @model_validator(mode="after")
    def _target_not_a_feature(self) -> DatasetSpec:
        if self.target in self.features:
            raise ValueError(f"target {self.target!r} is also listed as a feature")
        if len(set(self.features)) != len(self.features):
            raise ValueError("feature names must be unique")
        return self

    @property
    def columns(self) -> list[str]:
        return [*self.features, self.target]


class StepSpec(_Strict):
    """One scikit-learn estimator or transformer, by import path."""

    cls: str = Field(alias="class")
    params: dict[str, Any] = Field(default_factory=dict)


class TorchSpec(_Strict):
    """A PyTorch multi-layer perceptron and its training loop settings."""

    hidden_sizes: list[int] = Field(default_factory=lambda: [64, 32])
    dropout: float = 0.1
    epochs: int = 60
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 8
    mixed_precision: bool = True


class EstimatorSpec(_Strict):
    """How the model is trained: a scikit-learn pipeline or a PyTorch network."""

    framework: Literal["sklearn", "torch"] = "sklearn"
    steps: list[StepSpec] = Field(default_factory=list)
    torch: TorchSpec | None = None

    @model_validator(mode="after")
    def _matches_framework(self) -> EstimatorSpec:
        if self.framework == "sklearn" and not self.steps:
            raise ValueError("a sklearn estimator needs at least one step")
        if self.framework == "torch" and self.torch is None:
            object.__setattr__(self, "torch", TorchSpec())
        return self


class GateSpec(_Strict):
    """The quality gate a challenger must pass to become champion."""

    metric: str = "f1"
    min_value: float = Field(ge=0.0, le=1.0)
    max_regression: float = Field(0.01, ge=0.0)


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
    metrics: list[str] = Field(default_factory=lambda: ["accuracy", "f1", "roc_auc"])
    gate: GateSpec
    serving: ServingSpec = Field(default_factory=ServingSpec)
    canary: CanarySpec = Field(default_factory=CanarySpec)
    slo: SloSpec = Field(default_factory=SloSpec)
    automation: AutomationSpec = Field(default_factory=AutomationSpec)

    @field_validator("name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        if not _IDENTIFIER.match(value):
            raise ValueError(f"model name {value!r} must be lower case letters, digits and '_'")
        return value

    @model_validator(mode="after")
    def _gate_metric_is_reported(self) -> ModelSpec:
        if self.gate.metric not in self.metrics:
            raise ValueError(f"gate metric {self.gate.metric!r} is not among metrics {self.metrics}")
        return self

    @property
    def registered_name(self) -> str:
        """The one external name: MLflow registered model and KServe endpoint alike."""
        return self.serving.name or self.name.replace("_", "-")


def load_spec(path: Path) -> ModelSpec:
    with open(path) as fh:
        return ModelSpec.model_validate(yaml.safe_load(fh))


def load_specs(models_dir: Path | str | None = None) -> list[ModelSpec]:
    """Every `*.yaml` spec in the models folder, sorted by name; names must be unique."""
    folder = Path(models_dir or os.environ.get(MODELS_DIR_ENV) or DEFAULT_MODELS_DIR)
    specs = [load_spec(p) for p in sorted(folder.glob("*.yaml"))]
    names = [s.name for s in specs]
    duplicated = {n for n in names if names.count(n) > 1}
    if duplicated:
        raise ValueError(f"model names declared twice in {folder}: {sorted(duplicated)}")
    return specs
