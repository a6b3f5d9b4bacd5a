"""The drift-retrain sensor: it fires once per drift report that recommends a retrain, not for a report that does not,
and not again within the cool-down, whatever the reports say."""

from __future__ import annotations

import time

import dagster as dg

from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.monitoring import build_drift_retrain_sensor, drift_key
from tests.support import breast_cancer

SPEC = breast_cancer()
JOB = dg.define_asset_job(job_name(SPEC), selection=dg.AssetSelection.groups(SPEC.name))


def report(instance: dg.DagsterInstance, recommended: bool) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        drift_key(SPEC), metadata={"retrain_recommended": recommended, "drifted_features": dg.MetadataValue.json(["a"])}))
    time.sleep(0.01)


def test_fires_once_per_recommending_report_and_respects_the_cool_down():
    sensor = build_drift_retrain_sensor(SPEC, JOB)
    with dg.DagsterInstance.ephemeral() as instance:
        tick = lambda cursor: (lambda c: (sensor(c), c.cursor))(dg.build_sensor_context(instance=instance, cursor=cursor))

        result, cursor = tick(None)
        assert isinstance(result, dg.SkipReason) and "no drift report" in result.skip_message

        report(instance, recommended=False)
        result, cursor = tick(cursor)
        assert isinstance(result, dg.SkipReason) and "does not recommend" in result.skip_message

        report(instance, recommended=True)
        result, cursor = tick(cursor)
        assert isinstance(result, dg.RunRequest) and result.tags["trigger"] == "drift"

        result, cursor = tick(cursor)
        assert isinstance(result, dg.SkipReason) and "already considered" in result.skip_message

        report(instance, recommended=True)  # drift again, minutes later: inside the cool-down
        result, cursor = tick(cursor)
        assert isinstance(result, dg.SkipReason) and "cool-down ends in" in result.skip_message
