"""Retraining automation: the new-batch sensor and the nightly schedule, driven by Dagster's test contexts."""

from __future__ import annotations

import datetime as dt
import os

import dagster as dg

from mlops_platform.core import data
from mlops_platform.defs.automation import build_new_batch_sensor, build_retrain_schedule
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.resources import LandingResource, MLflowResource
from tests.support import breast_cancer

SPEC = breast_cancer()
JOB = dg.define_asset_job(job_name(SPEC), selection=dg.AssetSelection.groups(SPEC.name))


def evaluate(sensor, landing, cursor):
    mlflow = MLflowResource(tracking_uri=f"sqlite:///{landing.landing_uri}/../mlflow.db")
    context = dg.build_sensor_context(cursor=cursor, resources={"landing": landing, "mlflow": mlflow})
    return sensor(context), context.cursor


def test_sensor_requests_a_run_only_when_a_batch_lands_or_changes(tmp_path):
    landing = LandingResource(landing_uri=str(tmp_path / "landing"), quarantine_uri=str(tmp_path / "quarantine"))
    sensor = build_new_batch_sensor(SPEC, JOB)
    batch = data.encode_batch(data.bundled_batches(SPEC.dataset, 3)[0])

    result, cursor = evaluate(sensor, landing, None)
    assert isinstance(result, dg.SkipReason)

    landing.get_store().write(SPEC.name, "a.csv", batch)
    result, cursor = evaluate(sensor, landing, cursor)
    assert isinstance(result, dg.RunRequest) and result.tags["batches"] == "a.csv"
    first_key = result.run_key

    result, cursor = evaluate(sensor, landing, cursor)
    assert isinstance(result, dg.SkipReason), "the same batch must not retrain twice"

    landing.get_store().write(SPEC.name, "b.csv", batch)
    path = tmp_path / "landing" / SPEC.name / "a.csv"
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))  # a.csv rewritten too
    result, cursor = evaluate(sensor, landing, cursor)
    assert isinstance(result, dg.RunRequest)
    assert result.tags["batches"] == "a.csv,b.csv" and result.run_key != first_key


def test_sensor_ignores_partial_uploads(tmp_path):
    landing = LandingResource(landing_uri=str(tmp_path / "landing"), quarantine_uri=str(tmp_path / "quarantine"))
    (tmp_path / "landing" / SPEC.name).mkdir(parents=True)
    (tmp_path / "landing" / SPEC.name / ".c.csv.partial").write_bytes(b"half")
    result, _ = evaluate(build_new_batch_sensor(SPEC, JOB), landing, None)
    assert isinstance(result, dg.SkipReason)


def test_nightly_schedule_runs_the_model_job():
    schedule = build_retrain_schedule(SPEC, JOB)
    assert schedule.cron_schedule == SPEC.automation.retrain_cron
    assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    when = dt.datetime(2026, 11, 27, 2, 0, tzinfo=dt.UTC)
    [request] = schedule.evaluate_tick(dg.build_schedule_context(scheduled_execution_time=when)).run_requests
    assert request.job_name in (None, job_name(SPEC))


def test_definitions_expose_schedule_sensor_and_job_per_model(platform_home):
    from mlops_platform.definitions import build_definitions

    defs = build_definitions()
    assert defs.resolve_job_def(job_name(SPEC)) is not None
    assert defs.resolve_schedule_def(f"{SPEC.name}_nightly_retrain").job_name == job_name(SPEC)
    assert defs.resolve_sensor_def(f"{SPEC.name}_new_batch_sensor").job_name == job_name(SPEC)
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert {"batches_valid", "quality_gate"} <= checks
