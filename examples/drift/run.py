"""The whole monitoring loop on the local profile, in one command (`make drift-demo`):

  1. train the champion on the reference regime and serve it;
  2. send traffic from a shifted regime, and post its ground truth later, by request id, to the feedback route;
  3. the drift report finds the drift, its drift check fails (WARN) and so does live quality (ERROR);
  4. labelled batches of the new regime land; the drift sensor starts a retrain of the model's own job;
  5. the retrain goes through the quality gate and the canary, and a new champion serves;
  6. the next drift report, on the same shifted traffic, is back to normal.

Each step is printed with the seconds since the start. Everything runs in a fresh platform home under
`var/drift-demo/` (MLflow on SQLite, a Dagster instance, the KServe runtime on a free loopback port), stopped at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
STARTED = time.monotonic()


def say(step: str, detail: str = "") -> None:
    print(f"[{time.monotonic() - STARTED:6.1f}s] {step}{': ' + detail if detail else ''}", flush=True)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare_home() -> Path:
    home = Path(os.environ.get("MLOPS_DRIFT_HOME", REPO / "var" / "drift-demo"))
    shutil.rmtree(home, ignore_errors=True)
    (home / "dagster_home").mkdir(parents=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster_home" / "dagster.yaml")
    os.environ.update(MLOPS_HOME=str(home), DAGSTER_HOME=str(home / "dagster_home"), MLOPS_PROFILE="local",
                      MLOPS_MODELS_DIR=str(HERE / "models"), MLOPS_SERVING_PORT=str(free_port()),
                      MLOPS_GRPC_PORT=str(free_port()))
    return home


def main() -> int:
    home = prepare_home()
    sys.path.insert(0, str(HERE))
    import dagster as dg
    import requests
    from payments import payments

    from mlops_platform.core import data
    from mlops_platform.core.spec import load_specs
    from mlops_platform.definitions import build_definitions
    from mlops_platform.defs.model_assets import job_name
    from mlops_platform.defs.monitoring import build_drift_retrain_sensor
    from mlops_platform.defs.profiles import load_profile
    from mlops_platform.integrations.serving import ROUTING_PREFIX

    spec = next(s for s in load_specs() if s.name == "payments")
    defs = build_definitions(specs=[spec])
    resources = load_profile().resources
    serving = resources["serving"].get_backend()
    landing = resources["landing"].get_store()
    registry = resources["mlflow"].get_registry()
    name = spec.registered_name
    instance = dg.DagsterInstance.get()

    def run(job: str, tags: dict | None = None) -> dg.ExecuteInProcessResult:
        return defs.resolve_job_def(job).execute_in_process(instance=instance, raise_on_error=False, tags=tags)

    def report() -> dict:
        result = run(f"{spec.name}_monitor")
        checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
        meta = {k: getattr(v, "value", v) for k, v in result.get_asset_materialization_events()[0]
                .event_specific_data.materialization.metadata.items()}
        return {"meta": meta, "checks": checks}

    def traffic(seed: int, requests_n: int = 60, rows: int = 10) -> list[tuple[str, list]]:
        """Shifted payments sent as V1 requests, each with its own X-Request-Id; returns ids and true labels."""
        frame = payments(requests_n * rows, shifted=True, seed=seed)
        typed, _ = data.validate_batch("t.csv", frame.to_csv(index=False).encode(), spec.dataset)
        session, sent = requests.Session(), []
        for i in range(requests_n):
            chunk = typed.iloc[i * rows:(i + 1) * rows]
            request_id = uuid.uuid4().hex
            answer = session.post(f"{serving.base_url}/v1/models/{name}:predict", headers={"X-Request-Id": request_id},
                                  json={"instances": data.json_rows(chunk, spec.dataset)}, timeout=10)
            answer.raise_for_status()
            assert answer.headers["x-request-id"] == request_id
            sent.append((request_id, chunk[spec.dataset.target].tolist()))
        return sent

    def feedback(sent: list[tuple[str, list]]) -> None:
        labels = [{"request_id": rid, "row": row, "label": label} for rid, truth in sent for row, label in enumerate(truth)]
        token = serving.process.control_token()
        answer = requests.post(f"{serving.base_url}{ROUTING_PREFIX}/{name}/feedback", json={"labels": labels},
                               headers={"Authorization": f"Bearer {token}"}, timeout=10)
        answer.raise_for_status()

    store = resources["landing"].get_capture_store()

    def captured_settles(sent: list[tuple[str, list]]) -> None:
        """The capture writer flushes every 2 s, off the request path: wait until this traffic and its labels are in."""
        ids = {rid for rid, _ in sent}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            inputs, labels = store.inputs(name), store.feedback(name, drop_folder=spec.name)
            if (not inputs.empty and ids <= set(inputs["request_id"]) and not labels.empty
                    and ids <= set(labels["request_id"])):
                return
            time.sleep(0.25)
        raise TimeoutError("captured traffic and labels did not reach the capture store in 30 s")

    try:
        say("start", f"platform home {home}")
        first = run(job_name(spec))
        assert first.success, "the first training run failed"
        say("1. champion serves", f"version {registry.version_for(name, 'champion')} at {serving.base_url}")

        shift_started = time.monotonic()
        sent = traffic(seed=11)
        say("2. shifted traffic sent", f"{sum(len(t) for _, t in sent)} rows in {len(sent)} requests, ids in X-Request-Id")
        feedback(sent)
        say("   ground truth posted late", f"{sum(len(t) for _, t in sent)} labels to the feedback route")
        captured_settles(sent)

        batch = payments(8000, shifted=True, seed=21)
        landing.write(spec.name, "new-regime.csv", batch.to_csv(index=False).encode())
        say("   labelled data of the new regime landed", f"{len(batch)} rows")

        drifted = report()
        meta = drifted["meta"]
        say("3. drift detected", f"{meta['drifted_features']} (PSI {json.dumps(meta['psi'])}); prediction PSI "
                                 f"{meta['prediction_psi']}")
        say("   check feature_drift", f"passed={drifted['checks']['feature_drift'].passed} (WARN): "
                                     f"{drifted['checks']['feature_drift'].description}")
        say("   check live_quality", f"passed={drifted['checks']['live_quality'].passed} (ERROR): "
                                    f"{drifted['checks']['live_quality'].description}")
        assert meta["retrain_recommended"], "the drift report should recommend a retrain"

        sensor = build_drift_retrain_sensor(spec, defs.resolve_job_def(job_name(spec)))
        context = dg.build_sensor_context(instance=instance)
        request = sensor(context)
        assert isinstance(request, dg.RunRequest), request
        say("4. retrain started by the drift sensor", f"run key {request.run_key}, tags {request.tags}")
        again = sensor(dg.build_sensor_context(instance=instance, cursor=context.cursor))
        say("   the same report does not start a second retrain", again.skip_message)

        retrain = run(job_name(spec), tags=request.tags)
        checks = {c.check_name: c for c in retrain.get_asset_check_evaluations()}
        say("5. quality gate", f"passed={checks['quality_gate'].passed}: {checks['quality_gate'].description}")
        say("   canary", f"passed={checks['canary_analysis'].passed}: {checks['canary_analysis'].description}")
        assert retrain.success, "the retrain did not promote"
        champion = registry.version_for(name, "champion")
        served = requests.get(f"{serving.base_url}/v2/models/{name}", timeout=5).json()["versions"]
        say("   new champion serves", f"version {champion} (served: {served}); "
                                      f"{time.monotonic() - shift_started:.1f}s after the shifted traffic began")

        sent = traffic(seed=12)
        feedback(sent)
        captured_settles(sent)
        after = report()
        say("6. drift report on the new champion", f"drifted {after['meta']['drifted_features']}, live quality "
                                                   f"{after['meta']['live_quality']}, "
                                                   f"feature_drift passed={after['checks']['feature_drift'].passed}, "
                                                   f"live_quality passed={after['checks']['live_quality'].passed}")
        assert after["checks"]["feature_drift"].passed and after["checks"]["live_quality"].passed
        say("done", f"the loop closed in {time.monotonic() - STARTED:.1f}s")
        return 0
    finally:
        serving.stop()


if __name__ == "__main__":
    raise SystemExit(main())
