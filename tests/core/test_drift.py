"""Drift statistics in the pure core: shifted data is flagged, a same-distribution resample is not (false-positive rate
at most 5% per feature at the default settings), categories get their own test, and live quality is scored per task."""

from __future__ import annotations

import numpy as np
import pandas as pd

from mlops_platform.core import drift
from mlops_platform.core.metrics import Task
from mlops_platform.core.spec import DatasetSpec
from tests.support import CHURN_FEATURES, churn_frame

SPEC = DatasetSpec.model_validate({"source": "s3://b/*.csv", "features": CHURN_FEATURES, "target": "churned",
                                   "id_columns": ["customer_id"]})


def test_same_distribution_resamples_are_not_flagged():
    population = churn_frame(60_000, seed=1)
    reference = population.sample(5000, random_state=0)
    flagged, checks = 0, 0
    for trial in range(40):
        current = population.sample(1000, random_state=100 + trial)
        for feature in drift.feature_drift(SPEC, reference, current):
            checks += 1
            flagged += feature.drifted
    assert flagged / checks <= 0.05, f"{flagged} of {checks} feature checks flagged on unshifted data"


def test_a_shift_is_flagged_on_the_features_that_moved_and_only_those():
    reference = churn_frame(5000, seed=1)
    current = churn_frame(2000, seed=2)
    current["monthly"] = current["monthly"] * 1.6 + 20
    current["plan"] = np.where(np.random.default_rng(0).random(len(current)) < 0.7, "enterprise", current["plan"])
    current["region"] = np.where(np.random.default_rng(1).random(len(current)) < 0.5, "moon", current["region"])
    report = {f.feature: f for f in drift.feature_drift(SPEC, reference, current)}
    assert sorted(name for name, f in report.items() if f.drifted) == ["monthly", "plan", "region"]
    assert report["region"].current_fractions[drift.UNSEEN] > 0.4, "values the reference never had get their own bin"
    assert report["monthly"].test == "ks" and report["plan"].test == "chi-square"


def test_the_report_needs_enough_rows_and_scores_live_quality():
    reference = churn_frame(2000, seed=1)
    few = churn_frame(50, seed=3).assign(prediction="no")
    report = drift.drift_report(SPEC, Task.BINARY, reference, few)
    assert not report.enough_rows and report.features == [] and report.drifted == []
    labelled = pd.DataFrame({"prediction": ["yes", "no", "no", "yes"], "label": ["yes", "no", "yes", "yes"]})
    report = drift.drift_report(SPEC, Task.BINARY, reference, churn_frame(500, seed=4).assign(prediction="no"), labelled)
    assert report.enough_rows and report.labelled_rows == 4
    assert report.quality["accuracy"] == 0.75
    assert report.prediction.drifted, "every prediction 'no' while training had both labels"


def test_regression_quality_is_mae_and_rmse():
    labelled = pd.DataFrame({"prediction": [1.0, 2.0, 4.0], "label": [1.0, 3.0, 4.0]})
    quality = drift.live_quality(Task.REGRESSION, labelled)
    assert quality["mae"] == 1 / 3 and abs(quality["rmse"] - (1 / 3) ** 0.5) < 1e-12
