"""What the assets of one model hand each other: typed records, not dicts read back by key."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

from mlops_platform.core.canary import Outcome, Verdict
from mlops_platform.core.evaluation import GateDecision
from mlops_platform.core.metrics import Task
from mlops_platform.integrations.registry import LoggedRun


@dataclass(frozen=True)
class TrainingDataset:
    """The validated rows split into training and holdout, with reference statistics for drift checks."""

    train: pd.DataFrame
    holdout: pd.DataFrame
    reference: dict
    features: list[str]
    task: Task
    batches: list[dict]  # what it was built from: name, origin, uri, sha256, token, rows
    data_version: str

    @property
    def batch_hashes(self) -> dict[str, str]:
        return {b["name"]: b["sha256"] for b in self.batches}


@dataclass(frozen=True)
class TrainedModel:
    """A fitted model as logged in the registry's tracking store, with its holdout metrics."""

    run: LoggedRun
    metrics: dict[str, float]


@dataclass(frozen=True)
class RegisteredVersion:
    """A trained model registered as a new version, aliased `challenger`."""

    version: str
    trained: TrainedModel


@dataclass(frozen=True)
class GateReport:
    """Challenger and champion scored on the same holdout, and the quality gate's decision."""

    challenger_version: str
    champion_version: str | None
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    decision: GateDecision


@dataclass(frozen=True)
class CanaryRelease:
    """A challenger tried on live traffic beside the stable version, and what the analysis decided."""

    version: str
    stable: str | None
    verdict: Verdict
    seconds_to_decision: float = 0.0

    @property
    def passed(self) -> bool:
        return self.verdict.outcome == Outcome.PROMOTE

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class ChampionChange:
    """The version that now holds `champion`, and the one it took over from."""

    version: str
    previous: str | None


@dataclass(frozen=True)
class EndpointState:
    """What clients reach after the watch: the endpoint, the version it serves, and whether the guard rolled back."""

    name: str
    version: str
    url: str
    rolled_back: bool
