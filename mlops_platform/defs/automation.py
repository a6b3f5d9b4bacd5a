"""Automation: per model a nightly retraining schedule and a sensor that fires when a new batch lands; for all models
the reaper of canaries whose lease ran out."""

import hashlib
import json
from typing import Any

import dagster as dg

from mlops_platform.core.spec import ModelSpec
from mlops_platform.defs.release import reap_abandoned_canaries
from mlops_platform.defs.resources import LandingResource, MLflowResource, ServingResource
from mlops_platform.integrations.registry import Alias


def build_retrain_schedule(spec: ModelSpec, job: Any) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{spec.name}_nightly_retrain",
        job=job,
        cron_schedule=spec.automation.retrain_cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"Retrains, gates and redeploys {spec.name} on a schedule ({spec.automation.retrain_cron} UTC).",
    )


def champion_batches(spec: ModelSpec, mlflow: MLflowResource) -> dict[str, str]:
    """Name → change token of the batches the current champion was trained on: what a sensor starting afresh (a new
    instance, a reset cursor) has already seen, so it fires only for data the champion has not."""
    registry = mlflow.get_registry()
    version = registry.version_for(spec.registered_name, Alias.CHAMPION)
    batches = registry.trained_batches(spec.registered_name, version) if version else None
    return {b["name"]: b["token"] for b in batches or []}


def build_new_batch_sensor(spec: ModelSpec, job: Any) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"{spec.name}_new_batch_sensor",
        job=job,
        minimum_interval_seconds=spec.automation.sensor_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Starts retraining {spec.name} when a batch lands or changes in its landing location or source, "
                    "and its champion was not trained on it.",
    )
    def new_batch_sensor(context: dg.SensorEvaluationContext, landing: LandingResource, mlflow: MLflowResource):
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else champion_batches(spec, mlflow)
        current = landing.get_catalog(spec).fingerprint()
        arrived = sorted(name for name, token in current.items() if seen.get(name) != token)
        # Remember only what is still there, so a batch that is quarantined and lands again fires again.
        context.update_cursor(json.dumps(current, sort_keys=True))
        if not arrived:
            return dg.SkipReason(f"no new batches among {len(current)} in landing")
        run_key = hashlib.sha256(json.dumps({n: current[n] for n in arrived}, sort_keys=True).encode()).hexdigest()[:16]
        return dg.RunRequest(run_key=run_key, tags={"trigger": "new_batch", "batches": ",".join(arrived)[:200]})

    return new_batch_sensor


def build_canary_lease_sensor(specs: list[ModelSpec]) -> dg.SensorDefinition:
    """The lease reaper: a canary whose lease ran out with no verdict (its run died) is rolled back and tagged
    `canary=abandoned`. The local server also does this itself; in a cluster this sensor is what does it."""

    @dg.sensor(
        name="canary_lease_reaper",
        minimum_interval_seconds=15,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Rolls back canaries whose lease ran out with no verdict, for every model.",
    )
    def canary_lease_reaper(context: dg.SensorEvaluationContext, mlflow: MLflowResource, serving: ServingResource):
        reaped = reap_abandoned_canaries([s.registered_name for s in specs], mlflow.get_registry(), serving.get_backend())
        for name in reaped:
            context.log.warning(f"rolled back the abandoned canary of {name}")
        return dg.SkipReason(f"rolled back abandoned canaries of {reaped}" if reaped else "no canary outlived its lease")

    return canary_lease_reaper


@dg.op(config_schema={"model": str, "batch": str, "reason": str},
       description="Sets one batch of a model aside: a landing batch moves to quarantine with the reason, a file of the "
                   "model's own source is noted as excluded (it is the user's and stays in place) until it changes.")
def exclude_batch_op(context: dg.OpExecutionContext, landing: LandingResource) -> None:
    from mlops_platform.core.spec import load_models

    name, batch, reason = context.op_config["model"], context.op_config["batch"], context.op_config["reason"]
    spec = next((s for s in load_models().specs if s.name == name), None)
    if spec is None:
        raise dg.Failure(description=f"no model named {name!r}")
    catalog = landing.get_catalog(spec)
    try:
        found = catalog.find(batch)
    except KeyError as exc:
        raise dg.Failure(description=str(exc.args[0])) from None
    where = catalog.set_aside(found, reason)
    context.log.info(f"set {name}/{batch} aside: {where}")


@dg.job(description="Set a bad batch aside (config: model, batch, reason); the next training run leaves it out.")
def exclude_batch():
    exclude_batch_op()
