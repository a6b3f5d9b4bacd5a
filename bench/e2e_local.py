"""End-to-end benchmark of the local job: wall time from job start to the champion serving, split into compute and orchestration.

Runs in a fresh temporary platform home (MLflow on SQLite, Dagster instance, a real KServe server on a free loopback port):
  cold  - the first run, which also starts the model server (no champion yet, so no canary);
  warm  - a retrain with the server already up (what the schedule and sensor do), through the canary analysis;
The wall time includes the canary window and the post-promotion SLO watch (5 s each in the shipped spec), which are
waiting on traffic by design; `job_start_to_champion_serving_s` stops when the champion serves.
  cli   - `dagster job execute` as a subprocess, interpreter start and imports included;
  tasks - a regression (gradient boosting on scikit-learn's diabetes data) and a categorical model (plan, region,
          autopay and sign-up date beside numbers, from a CSV of the user's own with an ID column), each cold, from its
          YAML spec to serving.
Per-step time is STEP_START → STEP_SUCCESS from Dagster's event log; orchestration is the rest of the run's wall time.
Ends with one JSON line of figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def _timed_run(job) -> dict:
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        started = time.perf_counter()
        result = job.execute_in_process(instance=instance, raise_on_error=True)
        wall = time.perf_counter() - started
        records = instance.get_records_for_run(result.run_id).records
    starts, steps, run_start, champion_serving = {}, {}, None, None
    for record in records:
        event = record.event_log_entry
        if not event.is_dagster_event:
            continue
        kind = event.dagster_event.event_type_value
        if kind in ("RUN_START", "PIPELINE_START"):  # the run-start event keeps its legacy name
            run_start = event.timestamp
        if kind == "STEP_SUCCESS" and event.step_key.endswith("__champion"):
            champion_serving = event.timestamp  # the champion asset returns once the server answers with the version
        if kind == "STEP_START":
            starts[event.step_key] = event.timestamp
        elif kind == "STEP_SUCCESS":
            steps[event.step_key.split("__")[-1]] = round(event.timestamp - starts[event.step_key], 3)
    compute = sum(steps.values())
    return {
        "job_start_to_champion_serving_s": round(champion_serving - run_start, 3),
        "wall_s": round(wall, 3),
        "compute_s": round(compute, 3),
        "orchestration_s": round(wall - compute, 3),
        "orchestration_fraction": round((wall - compute) / wall, 3),
        "steps_s": steps,
    }


TASK_SPECS = {
    "diabetes_regression": {
        "dataset": {"source": "sklearn:diabetes", "features": ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"],
                    "target": "target"},
        "estimator": {"steps": [{"class": "sklearn.ensemble.GradientBoostingRegressor", "params": {"n_estimators": 100}}]},
        "gate": {"metric": "rmse", "max_value": 75.0},
    },
    "churn_categorical": {
        "dataset": {"source": "churn.csv", "target": "churned", "id_columns": ["customer_id"]},
        "estimator": {"steps": [{"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 1000}}]},
        "gate": {"metric": "roc_auc", "min_value": 0.7},
    },
}


def _task_models(folder: Path) -> dict:
    """Cold runs of a regression and a categorical model, each from its own YAML file to serving."""
    import yaml

    from mlops_platform.cli import main as cli
    from mlops_platform.core.spec import load_spec
    from mlops_platform.definitions import build_definitions
    from mlops_platform.defs.model_assets import job_name
    from tests.support import CHURN_FEATURES, churn_frame

    churn_frame(5000).to_csv(folder / "churn.csv", index=False)
    out = {}
    for name, body in TASK_SPECS.items():
        body = yaml.safe_load(yaml.safe_dump(body))
        if name == "churn_categorical":
            body["dataset"]["features"] = CHURN_FEATURES
        path = folder / f"{name}.yaml"
        path.write_text(yaml.safe_dump({"name": name, **body}))
        spec = load_spec(path)
        cli(["seed", "--model", name]) if spec.dataset.bundled else None
        out[name] = _timed_run(build_definitions(specs=[spec]).resolve_job_def(job_name(spec)))
    return out


def main() -> None:
    import tempfile

    from bench.common import platform_home

    with platform_home():
        from mlops_platform.cli import main as cli
        from mlops_platform.definitions import build_definitions

        cli(["seed", "--model", "breast_cancer"])
        job = build_definitions().resolve_job_def("breast_cancer_train_and_deploy")
        cold = _timed_run(job)
        warm = _timed_run(job)
        started = time.perf_counter()
        subprocess.run([str(Path(sys.executable).parent / "dagster"), "job", "execute", "-m", "mlops_platform.definitions",
                        "-j", "breast_cancer_train_and_deploy"], cwd=REPO, check=True, capture_output=True)
        cli_wall = round(time.perf_counter() - started, 3)
        with tempfile.TemporaryDirectory() as folder:
            os.environ["MLOPS_MODELS_DIR"] = folder  # so `cli seed` finds the bench's own specs
            tasks = _task_models(Path(folder))
    figures = {
        "benchmark": "e2e_local",
        "machine": f"{os.cpu_count()} cpu",
        "cold": cold,
        "warm": warm,
        "cli_execute_wall_s": cli_wall,
        "tasks_cold_to_serving_s": {name: run["job_start_to_champion_serving_s"] for name, run in tasks.items()},
        "tasks_train_step_s": {name: run["steps_s"].get("trained_model") for name, run in tasks.items()},
        "target_wall_s": 60,
        "target_orchestration_fraction": 0.25,
        "meets_targets": cold["job_start_to_champion_serving_s"] <= 60 and cold["orchestration_fraction"] <= 0.25,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
