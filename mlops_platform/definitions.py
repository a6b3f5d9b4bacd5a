"""The Dagster code location: every declared model's assets, checks, job, schedule and sensor, on the chosen profile."""

from __future__ import annotations

import dagster as dg

from mlops_platform.core.spec import ModelSpec, SpecError, load_models
from mlops_platform.defs.automation import build_canary_lease_sensor, build_new_batch_sensor, build_retrain_schedule, exclude_batch
from mlops_platform.defs.model_assets import build_model_assets, job_name
from mlops_platform.defs.monitoring import (
    build_drift_retrain_sensor,
    build_monitor_job_and_schedule,
    build_monitoring,
    drift_key,
)
from mlops_platform.defs.profiles import Profile, load_profile

ALL_MODELS_JOB = "train_and_deploy_all"
MODEL_TAG = "mlops/model"


def training_selection(specs: list[ModelSpec]) -> dg.AssetSelection:
    """The models' train-and-deploy assets: their groups without the drift reports, which run on their own schedule."""
    return dg.AssetSelection.groups(*[s.name for s in specs]) - dg.AssetSelection.assets(*[drift_key(s) for s in specs])


def model_definitions(spec: ModelSpec, profile: Profile) -> dg.Definitions:
    assets = build_model_assets(spec, profile.gpu_step_tags, profile.cpu_step_tags)
    monitor_job, monitor_schedule = build_monitor_job_and_schedule(spec)
    job = dg.define_asset_job(
        job_name(spec),
        selection=training_selection([spec]),
        description=f"Validate, train, register, gate, promote and serve {spec.name}.",
        # The cloud instance queues runs with the same value of this tag one at a time (deploy/dagster/instance.yaml).
        tags={MODEL_TAG: spec.name},
    )
    return dg.Definitions(
        assets=[*assets, build_monitoring(spec, profile.cpu_step_tags)],
        jobs=[job, monitor_job],
        schedules=[build_retrain_schedule(spec, job), monitor_schedule],
        sensors=[build_new_batch_sensor(spec, job), build_drift_retrain_sensor(spec, job)],
    )


SPEC_ERRORS_GROUP = "spec_errors"


def spec_error_definitions(error: SpecError) -> dg.Definitions:
    """A spec that does not load shows up as a failing asset carrying its message; every other model still loads."""
    description = f"The spec {error.path} does not load. " + " ".join(error.problems)

    @dg.asset(key=[SPEC_ERRORS_GROUP, error.model_name], group_name=SPEC_ERRORS_GROUP, description=description)
    def broken_spec() -> None:
        raise dg.Failure(description=str(error))

    return dg.Definitions(assets=[broken_spec])


def build_definitions(specs: list[ModelSpec] | None = None, profile: str | None = None) -> dg.Definitions:
    chosen = load_profile(profile)
    errors: list[SpecError] = []
    if specs is None:
        loaded = load_models()
        specs, errors = loaded.specs, loaded.errors
        for error in errors:
            dg.get_dagster_logger().error(f"model spec not loaded: {error}")
    every_model = dg.define_asset_job(
        ALL_MODELS_JOB,
        selection=training_selection(specs),
        description="The end-to-end job for every declared model.",
    )
    return dg.Definitions.merge(
        *[model_definitions(spec, chosen) for spec in specs],
        *[spec_error_definitions(error) for error in errors],
        dg.Definitions(jobs=[every_model, exclude_batch], sensors=[build_canary_lease_sensor(specs)], resources=chosen.resources,
                       executor=chosen.executor),
    )


defs = build_definitions()
