"""Synthesis benchmark for infra_cdktf: all twelve stacks (six environments, a cloud and a platform stack each),
wall time and peak memory of the whole process tree
(Python plus the jsii Node.js runtime it starts), sampled every 20 ms. Ends with one JSON line.

    python bench/infra_synth.py [--cli]    # --cli: through the pinned `cdktf synth` instead of `python main.py`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra_cdktf"


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cli", action="store_true")
    args = parser.parse_args()
    out = tempfile.mkdtemp(prefix="cdktf-out-")
    env = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CHECKPOINT_DISABLE": "1",
           "CDKTF_OUTDIR": out}
    command = ([str(INFRA / "node_modules" / ".bin" / "cdktf"), "synth", "--output", out] if args.cli
               else [sys.executable, "main.py"])
    started = time.perf_counter()
    proc = psutil.Popen(command, cwd=INFRA, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc))
        time.sleep(0.02)
    wall = time.perf_counter() - started
    if proc.returncode:
        raise SystemExit(proc.stderr.read().decode()[-3000:])
    stacks = sorted(p.name for p in (Path(out) / "stacks").iterdir())
    print(json.dumps({"benchmark": "infra_synth", "via": "cdktf synth" if args.cli else "python main.py",
                      "machine": f"{os.cpu_count()} cpu", "stacks": stacks, "wall_s": round(wall, 2),
                      "peak_rss_gib": round(peak / 2**30, 2), "targets": {"wall_s": 30, "peak_rss_gib": 3},
                      "meets_targets": wall <= 30 and peak <= 3 * 2**30 and len(stacks) == 12}))


if __name__ == "__main__":
    main()
