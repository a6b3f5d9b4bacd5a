"""Rollback benchmark: under steady client traffic, deploy a challenger that fails every request and one that is
about 10× slower, and measure the time from canary start to 100% stable and the failed client requests.

Uses the platform's own deploy path (`release_canary`: routing, analysis, automatic rollback) with the analysis
settings of the shipped spec (printed with the figures). The slow challenger is a wide MLP whose predictions are
heavy matrix products; the broken one promises 30 features in its signature but was fitted on 29.
Ends with one JSON line.

    python bench/rollback.py [--rps 100]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import platform_home, serve_model

MODEL = "breast_cancer"


class SteadyClients:
    """Clients sending one-row V1 requests at a fixed total rate, recording every answer's status and time."""

    def __init__(self, url: str, rows: list[list[float]], rps: float, workers: int = 4):
        self.url, self.rows, self.interval, self.workers = url, rows, workers / rps, workers
        self.answers: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()

    def _run(self, offset: int) -> None:
        import requests

        session, i, next_at = requests.Session(), offset, time.monotonic()
        while not self._stop.is_set():
            try:
                status = session.post(self.url, json={"instances": [self.rows[i % len(self.rows)]]}, timeout=10).status_code
            except requests.RequestException:
                status = 599
            with self._lock:
                self.answers.append((time.monotonic(), status))
            i += self.workers
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self):
        self._threads = [threading.Thread(target=self._run, args=(k,), daemon=True) for k in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        for t in self._threads:
            t.join()

    def failed_between(self, start: float, end: float) -> tuple[int, int]:
        window = [s for t, s in self.answers if start <= t <= end]
        return sum(1 for s in window if s >= 500), len(window)


def register(mlflow_res, spec, model, signature_frame) -> str:
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    mlflow.set_tracking_uri(mlflow_res.tracking_uri)

    mlflow.set_registry_uri(mlflow_res.tracking_uri)  # never another test's registry
    with mlflow.start_run():
        info = mlflow.sklearn.log_model(model, name="model", pip_requirements=["scikit-learn"],
                                        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)) or None,
                                        signature=infer_signature(signature_frame[spec.dataset.feature_names],
                                                                  signature_frame[spec.dataset.target]))
    return str(mlflow.register_model(info.model_uri, spec.registered_name).version)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rps", type=float, default=100.0, help="steady client traffic, requests per second")
    args = parser.parse_args()

    with platform_home():
        from sklearn.linear_model import LogisticRegression
        from sklearn.neural_network import MLPClassifier
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        from mlops_platform.core import data
        from mlops_platform.defs.release import release_canary

        spec, mlflow_res, serving = serve_model(MODEL)
        name, features, target = spec.registered_name, spec.dataset.feature_names, spec.dataset.target
        stable = mlflow_res.version_for(name, "champion")
        frame = data.bundled_batches(spec.dataset, 1)[0]
        rows = frame[features].to_numpy(dtype=float).tolist()

        broken = register(mlflow_res, spec, LogisticRegression(max_iter=500).fit(frame[features[:-1]].to_numpy(), frame[target]), frame)
        wide = make_pipeline(StandardScaler(), MLPClassifier(hidden_layer_sizes=(3072, 3072), max_iter=3, random_state=0))
        slow = register(mlflow_res, spec, wide.fit(frame[features].to_numpy(), frame[target]), frame)
        for version in (broken, slow):  # both would pass an offline gate; only live traffic shows what is wrong
            mlflow_res.record_gate(name, version, True, "benchmark challenger")

        x1 = frame[features].to_numpy(dtype=float)[:1]
        stable_model = mlflow_res.load(name, stable)
        timing = {}
        for label, model in (("stable", stable_model), ("slow", wide)):
            started = time.perf_counter()
            for _ in range(50):
                model.predict_proba(x1)
            timing[label] = (time.perf_counter() - started) / 50 * 1000
        results = {}
        url = f"{serving.base_url}/v1/models/{name}:predict"
        with SteadyClients(url, rows, args.rps) as clients:
            time.sleep(1.0)
            for label, version in (("failing_challenger", broken), ("slow_challenger", slow)):
                started = time.monotonic()
                verdict = release_canary(spec, mlflow_res, serving, stable, version, rows).verdict
                ended = time.monotonic()
                failed, total = clients.failed_between(started, ended)
                results[label] = {
                    "outcome": str(verdict.outcome),
                    "reason": verdict.reason,
                    "seconds_canary_start_to_100pct_stable": round(ended - started, 3),
                    "failed_client_requests": failed,
                    "client_requests_during": total,
                }
                time.sleep(1.0)
        assert serving.snapshot(name) is not None

    t = spec.canary
    figures = {
        "benchmark": "rollback",
        "machine": f"{os.cpu_count()} cpu",
        "client_rps": args.rps,
        "predict_ms_in_process": {k: round(v, 3) for k, v in timing.items()},
        "slowdown_in_process": round(timing["slow"] / timing["stable"], 1),
        "analysis_settings": {"traffic_percent": t.traffic_percent, "min_requests": t.min_requests,
                              "window_seconds": t.window_seconds, "max_error_rate": t.max_error_rate,
                              "max_latency_ratio": t.max_latency_ratio, "min_latency_increase_ms": t.min_latency_increase_ms,
                              "slo_max_p95_ms": spec.slo.max_p95_ms, "replay_rps": t.replay_rps},
        **results,
        "target_seconds": 10,
        "meets_targets": all(r["outcome"] == "rollback" and r["seconds_canary_start_to_100pct_stable"] <= 10
                             for r in results.values()),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
