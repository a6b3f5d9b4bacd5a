"""Through the command line, as a user would: seed, `dagster job launch`, a prediction over HTTP, stop."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import requests

from tests.support import REPO

BIN = os.path.dirname(sys.executable)


def run(*command: str, timeout: int = 300) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=REPO, env=os.environ.copy(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def test_launch_through_the_cli_ends_with_a_served_prediction(platform_home):
    import dagster as dg

    run(sys.executable, "-m", "mlops_platform.cli", "seed")
    run(f"{BIN}/dagster", "job", "launch", "-w", "workspace.yaml", "-j", "breast_cancer_train_and_deploy")

    with dg.DagsterInstance.get() as instance:
        [launched] = instance.get_runs(limit=1)
        assert launched.job_name == "breast_cancer_train_and_deploy"
        assert launched.status == dg.DagsterRunStatus.SUCCESS

    printed = run(sys.executable, "-m", "mlops_platform.cli", "predict", "--model", "breast_cancer", "--rows", "3").stdout
    assert "endpoint: http://127.0.0.1:" in printed and "prediction for 3 rows" in printed

    port = os.environ["MLOPS_SERVING_PORT"]
    body = {"instances": [[14.0, 20.0, 90.0, 600.0, 0.1, 0.1, 0.08, 0.05, 0.18, 0.06, 0.4, 1.2, 2.8, 40.0, 0.007, 0.025,
                           0.03, 0.011, 0.02, 0.0037, 16.0, 25.0, 107.0, 880.0, 0.13, 0.25, 0.27, 0.11, 0.29, 0.08]]}
    answer = requests.post(f"http://127.0.0.1:{port}/v1/models/breast-cancer:predict", json=body, timeout=10)
    assert answer.status_code == 200 and answer.json()["predictions"][0] in (0, 1)

    assert "stopped the model server" in run(sys.executable, "-m", "mlops_platform.cli", "stop").stdout
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/v2/health/live", timeout=2)


@pytest.mark.parametrize("profile", ["local", "aws", "azure", "gcp"])
def test_definitions_validate_for_every_profile(platform_home, profile):
    env = {**os.environ, "MLOPS_PROFILE": profile}
    result = subprocess.run([f"{BIN}/dagster", "definitions", "validate", "-m", "mlops_platform.definitions"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "All code locations passed validation" in result.stdout + result.stderr
