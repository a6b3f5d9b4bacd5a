"""The shipped drift example runs the whole loop in one command, as `make drift-demo` runs it."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support import REPO


def test_the_drift_example_closes_the_loop(tmp_path):
    env = {**os.environ, "MLOPS_DRIFT_HOME": str(tmp_path / "drift-demo")}
    done = subprocess.run([sys.executable, str(REPO / "examples" / "drift" / "run.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    steps = [line for line in done.stdout.splitlines() if line.startswith("[")]
    assert done.returncode == 0, "\n".join(steps) + done.stderr[-3000:]
    text = "\n".join(steps)
    for step in ("1. champion serves", "3. drift detected", "check feature_drift: passed=False",
                 "check live_quality: passed=False", "4. retrain started by the drift sensor",
                 "does not start a second retrain", "5. quality gate: passed=True", "canary: passed=True",
                 "new champion serves: version 2", "feature_drift passed=True, live_quality passed=True", "done"):
        assert step in text, f"missing {step!r} in\n{text}"
    seconds = float(steps[-1].split("s]")[0].strip("[ "))
    assert seconds < 180, f"the example took {seconds:.0f} s; the issue allows 3 minutes"
