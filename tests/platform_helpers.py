"""Helpers for tests that run the real platform: seed landing, run a job in process, read MLflow and the server."""

from __future__ import annotations

import dagster as dg

from mlops_platform.core import data
from mlops_platform.core.spec import CanarySpec, ModelSpec, SloSpec, load_specs
from mlops_platform.defs.model_assets import job_name
from mlops_platform.defs.profiles import load_profile


def breast_cancer() -> ModelSpec:
    return next(s for s in load_specs() if s.name == "breast_cancer")


def fast(spec: ModelSpec, **canary: float) -> ModelSpec:
    """The spec with short canary and watch windows, so a test run takes seconds, not tens of seconds."""
    return spec.model_copy(update={
        "canary": CanarySpec(**{"window_seconds": 1.5, "min_requests": 20, "max_window_seconds": 6.0, "replay_rps": 200, **canary}),
        "slo": SloSpec(watch_seconds=1.5, min_requests=20),
    })


def seed(spec: ModelSpec, batches: int = 3) -> None:
    landing = load_profile().resources["landing"]
    for i, batch in enumerate(data.bundled_batches(spec.dataset, batches)):
        landing.write(spec.name, f"seed-{i:03d}.csv", data.encode_batch(batch))


def run_job(spec: ModelSpec) -> dg.ExecuteInProcessResult:
    """The model's real job, executed in process against the DAGSTER_HOME instance."""
    from mlops_platform.definitions import build_definitions

    defs = build_definitions(specs=[spec])
    with dg.DagsterInstance.get() as instance:
        return defs.resolve_job_def(job_name(spec)).execute_in_process(instance=instance, raise_on_error=False)


def check_results(result: dg.ExecuteInProcessResult) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def materialized(result: dg.ExecuteInProcessResult) -> dict[str, dict]:
    """Asset name → its materialization metadata (raw values)."""
    out = {}
    for event in result.get_asset_materialization_events():
        mat = event.event_specific_data.materialization
        out[mat.asset_key.path[-1]] = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
    return out


def resources() -> dict:
    return load_profile().resources
