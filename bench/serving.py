"""Serving benchmark: our KServe runtime against `mlflow models serve --env-manager local`, same registered model.

Both servers run on loopback in this one run and are loaded with wrk (one thread, keep-alive, a Lua POST script) at
concurrency 1, 16 and 64 with 1-row and 100-row requests, ours with the spec's batching and without. Reports req/s,
p50, p99, server CPU time per request (the server process and its children), and the in-process floor: JSON decode +
predict + JSON encode. Ends with one JSON line.

    python bench/serving.py [--seconds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import free_port, platform_home, serve_model, wait_http, wrk

MODEL = "breast_cancer"


def in_process_floor(loaded, features: list[str], rows: list[list[float]], repeat: int = 2000) -> float:
    """Microseconds for orjson decode → protocol parse → predict → encode, with no server around it."""
    import orjson
    import sklearn

    from mlops_platform.core.training import predict
    from mlops_platform.serving import protocol

    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
    body = orjson.dumps({"instances": rows})
    for _ in range(100):
        protocol.parse_v1(orjson.loads(body), features)
    started = time.perf_counter()
    for _ in range(repeat):
        matrix = protocol.parse_v1(orjson.loads(body), features)
        labels, _ = predict(loaded.model, matrix)
        orjson.dumps(protocol.v1_response(labels))
    return round((time.perf_counter() - started) / repeat * 1e6, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()

    with platform_home() as home:
        from mlops_platform.core import data
        from mlops_platform.integrations.registry import Alias, load_registered

        spec, registry, serving = serve_model(MODEL)
        name = spec.registered_name
        version = registry.version_for(name, Alias.CHAMPION)
        frame = data.bundled_batches(spec.dataset, 1)[0]
        features = spec.dataset.feature_names
        rows = frame[features].to_numpy(dtype=float).tolist()
        bodies = {1: rows[:1], 100: rows[:100]}

        import mlflow

        mlflow.set_tracking_uri(registry.tracking_uri)

        mlflow.set_registry_uri(registry.tracking_uri)  # never another test's registry
        loaded = load_registered(registry.client(), name, version=version)
        floors = {n: in_process_floor(loaded, features, r) for n, r in bodies.items()}

        mlflow_port = free_port()
        # mlflow serve execs `uvicorn` by name: the virtualenv must come first on PATH.
        env = {**os.environ, "MLFLOW_TRACKING_URI": registry.tracking_uri,
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        mlflow_serve = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", f"models:/{name}/{version}",
             "--env-manager", "local", "-h", "127.0.0.1", "-p", str(mlflow_port)],
            env=env, cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            wait_http(f"http://127.0.0.1:{mlflow_port}/ping")
            ours_pid = serving.process.running_pid()
            ours_url = f"{serving.base_url}/v1/models/{name}:predict"
            # (url, body, server pid, batching set first): ours with the spec's batching, then without.
            targets = {
                "kserve_runtime": (ours_url, lambda r: {"instances": r}, ours_pid, spec.serving.batching.model_dump()),
                "kserve_runtime_unbatched": (ours_url, lambda r: {"instances": r}, ours_pid, {"enabled": False}),
                "mlflow_serve": (f"http://127.0.0.1:{mlflow_port}/invocations",
                                 lambda r: {"dataframe_split": {"columns": features, "data": r}}, mlflow_serve.pid, None),
            }
            results: dict = {}
            for server, (url, make_body, pid, batching) in targets.items():
                if batching is not None:
                    serving.set_routing(name, version, batching=batching)
                for n_rows, r in bodies.items():
                    for connections in (1, 16, 64):
                        results[f"{server}/rows{n_rows}/c{connections}"] = wrk(url, make_body(r), connections, args.seconds, pid)
        finally:
            os.killpg(mlflow_serve.pid, 15)
            mlflow_serve.wait(timeout=30)

    ours, theirs = results["kserve_runtime/rows1/c16"], results["mlflow_serve/rows1/c16"]
    figures = {
        "benchmark": "serving",
        "machine": f"{os.cpu_count()} cpu",
        "seconds_per_point": args.seconds,
        "results": results,
        "in_process_floor_us": {f"rows{n}": v for n, v in floors.items()},
        "c16_rows1_req_per_s_ratio": round(ours["req_per_s"] / theirs["req_per_s"], 2),
        "c16_rows1_p99_ms": {"kserve_runtime": ours["p99_ms"], "mlflow_serve": theirs["p99_ms"]},
        "c16_rows1_cpu_over_floor": round(ours["server_cpu_us_per_req"] / floors[1], 2),
        "c16_rows1_cpu_over_floor_unbatched": round(
            results["kserve_runtime_unbatched/rows1/c16"]["server_cpu_us_per_req"] / floors[1], 2),
        "c64_rows1_req_per_s_batched_over_unbatched": round(
            results["kserve_runtime/rows1/c64"]["req_per_s"] / results["kserve_runtime_unbatched/rows1/c64"]["req_per_s"], 2),
        "rows1_v1_server_cpu_us": results["kserve_runtime/rows1/c1"]["server_cpu_us_per_req"],
        # The serving-engine issue's targets, all at 1 row: CPU per request at c=16 within 1.5x the in-process
        # floor; batching worth 1.5x the req/s at c=64; 10x mlflow serve's req/s and a fifth of its p99 at c=16.
        "targets": {"c16_cpu_over_floor": 1.5, "c64_batched_over_unbatched": 1.5, "c16_req_per_s_ratio": 10.0,
                    "c16_p99_fraction": 0.2},
    }
    figures["meets_targets"] = (figures["c16_rows1_cpu_over_floor"] <= 1.5
                                and figures["c64_rows1_req_per_s_batched_over_unbatched"] >= 1.5
                                and figures["c16_rows1_req_per_s_ratio"] >= 10.0
                                and ours["p99_ms"] <= 0.2 * theirs["p99_ms"])
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
