"""End-to-end benchmark of the local job: wall time from job start to the champion serving, split into compute and orchestration.

Runs in a fresh temporary platform home (MLflow on SQLite, Dagster instance, a real KServe server on a free loopback port):
  cold  - the first run, which also starts the model server (no champion yet, so no canary);
  warm  - a retrain with the server already up (what the schedule and sensor do), through the canary analysis;
The wall time includes the canary window and the post-promotion SLO watch (5 s each in the shipped spec), which are
waiting on traffic by design; `job_start_to_champion_serving_s` stops when the champion serves.
  cli   - `dagster job execute` as a subprocess, interpreter start and imports included.
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


def main() -> None:
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
    figures = {
        "benchmark": "e2e_local",
        "machine": f"{os.cpu_count()} cpu",
        "cold": cold,
        "warm": warm,
        "cli_execute_wall_s": cli_wall,
        "target_wall_s": 60,
        "target_orchestration_fraction": 0.25,
        "meets_targets": cold["job_start_to_champion_serving_s"] <= 60 and cold["orchestration_fraction"] <= 0.25,
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
