"""Monitoring benchmark: what capture costs the serving runtime, what a drift report costs, and how long the drift
example takes from shifted traffic to a new champion. Ends with one JSON line of figures.

  capture  - wrk at c=16 on one-row V1 requests to breast-cancer, capture off, at 10% and at 100%, side by side in
             one run: req/s, p99 and the server's CPU per request (targets: ≤ 10% CPU overhead at 10% sampling);
  drift    - the drift statistics on 100 k captured rows × 30 features (20 numeric, 10 categorical) against a 20 k
             reference, each method in a fresh process for its peak memory: the platform's PSI with KS / chi-square
             (`mlops_platform/core/drift.py`) and, when `--evidently-python` names an interpreter with Evidently
             0.7, Evidently's DataDriftPreset on the same data (targets: ≤ 10 s, ≤ 1 GiB);
  loop     - `examples/drift/run.py`: seconds from the shifted traffic's start to the new champion serving.

    python bench/monitoring.py [--seconds 5] [--evidently-python /path/to/venv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATA = textwrap.dedent("""
    import numpy as np, pandas as pd
    def frames(rows, reference_rows, shift):
        rng = np.random.default_rng(0)
        def make(n, moved):
            out = {f"x{i}": rng.normal(0.3 * moved * (i % 3 == 0), 1.0, n) for i in range(20)}
            for i in range(10):
                p = np.array([0.4, 0.3, 0.2, 0.1]) if not (moved and i % 2) else np.array([0.1, 0.2, 0.3, 0.4])
                out[f"c{i}"] = rng.choice(["a", "b", "c", "d"], n, p=p)
            return pd.DataFrame(out)
        return make(reference_rows, False), make(rows, shift)
""")

HAND = DATA + textwrap.dedent("""
    import json, resource, sys, time
    sys.path.insert(0, __REPO__)
    from mlops_platform.core import drift
    from mlops_platform.core.spec import DatasetSpec
    reference, current = frames(__ROWS__, __REFERENCE_ROWS__, True)
    features = [f"x{i}" for i in range(20)] + [{"name": f"c{i}", "type": "categorical"} for i in range(10)]
    spec = DatasetSpec.model_validate({"source": "s3://b/x.csv", "features": features, "target": "y"})
    started = time.perf_counter()
    result = drift.feature_drift(spec, reference, current)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "drifted": sum(f.drifted for f in result)}))
""")

EVIDENTLY = DATA + textwrap.dedent("""
    import json, resource, time
    from evidently import Dataset, DataDefinition, Report
    from evidently.presets import DataDriftPreset
    reference, current = frames(__ROWS__, __REFERENCE_ROWS__, True)
    definition = DataDefinition(numerical_columns=[f"x{i}" for i in range(20)],
                                categorical_columns=[f"c{i}" for i in range(10)])
    started = time.perf_counter()
    snapshot = Report([DataDriftPreset()]).run(Dataset.from_pandas(current, data_definition=definition),
                                               Dataset.from_pandas(reference, data_definition=definition))
    result = snapshot.dict()
    seconds = time.perf_counter() - started
    drifted = next((m["value"]["count"] for m in result["metrics"] if "DriftedColumnsCount" in m.get("metric_name", "")), None)
    print(json.dumps({"seconds": round(seconds, 3), "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
                      "drifted": drifted}))
""")


def script(template: str, rows: int, reference_rows: int) -> str:
    return (template.replace("__REPO__", repr(str(REPO))).replace("__ROWS__", str(rows))
            .replace("__REFERENCE_ROWS__", str(reference_rows)))


def child(python: str, code: str) -> dict:
    done = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=600)
    if done.returncode:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def capture_overhead(seconds: float) -> dict:
    from bench.common import platform_home, serve_model, wrk

    with platform_home():
        spec, registry, serving = serve_model("breast_cancer")
        name = spec.registered_name
        version = registry.version_for(name, "champion")
        from mlops_platform.core import data

        row = data.bundled_batches(spec.dataset, 1)[0][spec.dataset.feature_names].head(1).to_numpy(dtype=float).tolist()
        url = f"{serving.base_url}/v1/models/{name}:predict"
        pid = serving.process.running_pid()
        out = {}
        for label, rate in (("off", 0.0), ("rate_10pct", 0.1), ("rate_100pct", 1.0), ("off_again", 0.0)):
            serving.set_routing(name, version, capture_rate=rate)
            time.sleep(3.0)  # the writer drains what the previous phase captured before this one is measured
            out[label] = wrk(url, {"instances": row}, 16, seconds, pid)
    off = (out["off"]["server_cpu_us_per_req"] + out["off_again"]["server_cpu_us_per_req"]) / 2
    return {
        "c16_rows1": out,
        "cpu_overhead_10pct": round(out["rate_10pct"]["server_cpu_us_per_req"] / off - 1, 3),
        "cpu_overhead_100pct": round(out["rate_100pct"]["server_cpu_us_per_req"] / off - 1, 3),
        "req_per_s_ratio_10pct": round(out["rate_10pct"]["req_per_s"] / out["off"]["req_per_s"], 3),
    }


def drift_loop() -> dict:
    env = {**os.environ, "MLOPS_DRIFT_HOME": str(REPO / "var" / "drift-bench")}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "drift" / "run.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    text = done.stdout
    after = re.search(r"new champion serves: .*; ([\d.]+)s after the shifted traffic began", text)
    total = re.search(r"the loop closed in ([\d.]+)s", text)
    return {"ok": done.returncode == 0, "shift_to_new_champion_s": float(after.group(1)) if after else None,
            "whole_example_s": float(total.group(1)) if total else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--evidently-python", default=None, help="an interpreter with evidently 0.7, numpy and pandas")
    args = parser.parse_args()
    drift_figures = {"platform_psi_ks": child(sys.executable, script(HAND, args.rows, 20_000))}
    if args.evidently_python:
        drift_figures["evidently_0_7"] = child(args.evidently_python, script(EVIDENTLY, args.rows, 20_000))
    capture = capture_overhead(args.seconds)
    loop = drift_loop()
    ours = drift_figures["platform_psi_ks"]
    figures = {
        "benchmark": "monitoring",
        "machine": f"{os.cpu_count()} cpu",
        "capture": capture,
        "drift_report_100k_x_30": drift_figures,
        "loop": loop,
        "targets": {"cpu_overhead_10pct": 0.10, "drift_seconds": 10.0, "drift_peak_mib": 1024},
        "meets_targets": (capture["cpu_overhead_10pct"] <= 0.10 and ours.get("seconds", 1e9) <= 10.0
                          and ours.get("peak_rss_mib", 1e9) <= 1024 and loop["ok"]),
    }
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
