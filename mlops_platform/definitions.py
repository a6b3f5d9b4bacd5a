"""The Dagster code location: every declared model's assets, checks, job, schedule and sensor, on the chosen profile."""

from __future__ import annotations

import dagster as dg

from mlops_platform.core.spec import ModelSpec, load_specs
from mlops_platform.defs.automation import build_canary_lease_sensor, build_new_batch_sensor, build_retrain_schedule
from mlops_platform.defs.model_assets import build_model_assets, job_name
from mlops_platform.defs.profiles import Profile, load_profile

ALL_MODELS_JOB = "train_and_deploy_all"
MODEL_TAG = "mlops/model"


def model_definitions(spec: ModelSpec, profile: Profile) -> dg.Definitions:
    assets = build_model_assets(spec, profile.gpu_step_tags, profile.cpu_step_tags)
    job = dg.define_asset_job(
        job_name(spec),
        selection=dg.AssetSelection.groups(spec.name),
        description=f"Validate, train, register, gate, promote and serve {spec.name}.",
        # The cloud instance queues runs with the same value of this tag one at a time (deploy/dagster/instance.yaml).
        tags={MODEL_TAG: spec.name},
    )
    return dg.Definitions(
        assets=assets,
        jobs=[job],
        schedules=[build_retrain_schedule(spec, job)],
        sensors=[build_new_batch_sensor(spec, job)],
    )


def build_definitions(specs: list[ModelSpec] | None = None, profile: str | None = None) -> dg.Definitions:
    chosen = load_profile(profile)
    specs = specs if specs is not None else load_specs()
    every_model = dg.define_asset_job(
        ALL_MODELS_JOB,
        selection=dg.AssetSelection.groups(*[s.name for s in specs]),
        description="The end-to-end job for every declared model.",
    )
    return dg.Definitions.merge(
        *[model_definitions(spec, chosen) for spec in specs],
        dg.Definitions(jobs=[every_model], sensors=[build_canary_lease_sensor(specs)], resources=chosen.resources,
                       executor=chosen.executor),
    )


defs = build_definitions()
