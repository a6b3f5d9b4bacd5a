"""The pure ML core: batch validation, the split, statistics, metrics and the quality gate."""

import numpy as np
import pandas as pd
import pytest

from mlops_platform.core import data, evaluation, training
from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import GateSpec, load_specs

SPEC = next(s for s in load_specs() if s.name == "breast_cancer")
DS = SPEC.dataset


def _batch() -> pd.DataFrame:
    return data.bundled_batches(DS, 3)[0]


def test_bundled_batches_cover_the_data_set_once():
    batches = data.bundled_batches(DS, 3)
    assert sorted(len(b) for b in batches) == [189, 190, 190]
    assert list(batches[0].columns) == DS.columns
    assert len(pd.concat(batches).drop_duplicates()) == 569


def test_valid_batch_passes():
    frame, report = data.validate_batch("b.csv", data.encode_batch(_batch()), DS)
    assert report.ok and report.rows == 190
    assert list(frame.columns) == DS.columns


@pytest.mark.parametrize(
    "mutate, problem",
    [
        (lambda f: f.drop(columns=["mean_radius"]), "missing columns: ['mean_radius']"),
        (lambda f: f.assign(extra=1), "unexpected columns: ['extra']"),
        (lambda f: f.assign(target=f["target"].astype(float).where(f.index > 2)), "3 null value(s) in target column 'target'"),
        (lambda f: f.assign(mean_area="big"), "feature 'mean_area' is numeric but holds ['big']"),
        (lambda f: f.iloc[0:0], "batch has a header but no rows"),
    ],
)
def test_bad_batches_are_reported_not_raised(mutate, problem):
    frame, report = data.validate_batch("b.csv", data.encode_batch(mutate(_batch())), DS)
    assert frame is None and not report.ok
    assert any(p.startswith(problem) for p in report.problems), report.problems


def test_empty_and_unreadable_files():
    assert data.validate_batch("b.csv", b"", DS)[1].problems == ["file is empty"]
    assert data.validate_batch("b.parquet", b"not parquet", DS)[1].problems[0].startswith("unreadable file")


def test_split_membership_is_stable_as_data_grows():
    batches = data.bundled_batches(DS, 3)
    small = data.split_dataset(pd.concat(batches[:2], ignore_index=True), DS)
    full = data.split_dataset(pd.concat(batches, ignore_index=True), DS)
    key = lambda f: set(map(tuple, f[DS.feature_names].round(8).to_numpy()))
    assert key(small.holdout) <= key(full.holdout)
    assert not key(small.holdout) & key(full.train)
    assert 0.18 < len(full.holdout) / 569 < 0.32


def test_reference_statistics_describe_each_feature():
    stats = data.reference_statistics(_batch(), DS)
    radius = stats["features"]["mean_radius"]
    assert radius["min"] <= radius["mean"] <= radius["max"]
    assert abs(sum(radius["bin_fractions"]) - 1.0) < 1e-9
    assert set(stats["target_distribution"]) == {"0", "1"}


def test_training_and_metrics():
    frame = pd.concat(data.bundled_batches(DS, 1))
    split = data.split_dataset(frame, DS)
    model = training.train(SPEC, Task.BINARY, split.train)
    x = data.model_input(split.holdout, DS)
    metrics = evaluation.evaluate(model, x, split.holdout[DS.target].to_numpy(), ["accuracy", "f1", "roc_auc"])
    assert metrics["f1"] > 0.93 and metrics["roc_auc"] > 0.97
    name, png = evaluation.diagnostic_png(model, x, split.holdout[DS.target].to_numpy(), "t")
    assert name == "confusion_matrix" and png.startswith(b"\x89PNG")


def test_unknown_metric_is_refused():
    with pytest.raises(ValueError, match="unknown metric"):
        evaluation.compute_metrics(["nope"], np.array([0, 1]), np.array([0, 1]), np.array([[0.9, 0.1], [0.2, 0.8]]),
                                   np.array([0, 1]))


@pytest.mark.parametrize(
    "challenger, champion, passed, fragment",
    [
        (0.95, None, True, "no champion yet"),
        (0.85, None, False, "below the minimum"),
        (0.955, 0.96, True, "champion 0.9600"),
        (0.93, 0.96, False, "regresses against the champion"),
    ],
)
def test_gate_decision(challenger, champion, passed, fragment):
    gate = GateSpec(metric="f1", min_value=0.9, max_regression=0.01)
    decision = evaluation.gate_decision(gate, {"f1": challenger}, None if champion is None else {"f1": champion})
    assert decision.passed is passed
    assert fragment in decision.reason


def test_spec_rejects_mistakes():
    from pydantic import ValidationError

    from mlops_platform.core.spec import ModelSpec

    raw = SPEC.model_dump(by_alias=True)
    with pytest.raises(ValidationError, match="does not apply to the same task"):
        ModelSpec.model_validate({**raw, "gate": {"metric": "r2", "min_value": 0.5}, "dataset": {**raw["dataset"], "classes": None}})
    with pytest.raises(ValidationError, match="model name"):
        ModelSpec.model_validate({**raw, "name": "Bad-Name"})
