"""The images we ship: Dockerfiles lint clean with hadolint, and the serving image runs the runtime the
InferenceServices expect."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO

HADOLINT = Path(sys.executable).parent / "hadolint"


@pytest.mark.parametrize("dockerfile", ["Dockerfile.serving", "Dockerfile.dagster", "Dockerfile.mlflow"])
def test_dockerfiles_lint_clean(dockerfile):
    result = subprocess.run([str(HADOLINT), "--failure-threshold", "info", str(REPO / "deploy" / dockerfile)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_serving_image_entrypoint_is_the_runtime_the_cluster_backend_configures():
    from mlops_platform.core.canary import Revision
    from mlops_platform.integrations.serving.kserve import RUNTIME_PORT, predictor_spec

    dockerfile = (REPO / "deploy" / "Dockerfile.serving").read_text()
    assert 'ENTRYPOINT ["python", "-m", "mlops_platform.serving"]' in dockerfile
    assert f"EXPOSE {RUNTIME_PORT}" in dockerfile
    args = predictor_spec("m", "1", Revision.STABLE, image="i", tracking_uri="t", service_account=None,
                          storage_uris={"1": "s3://b/m/1"}).containers[0].args
    from mlops_platform.serving.__main__ import build_parser

    parsed = build_parser().parse_args(args)
    assert (parsed.host, parsed.port, parsed.model, parsed.revision) == ("0.0.0.0", RUNTIME_PORT, ["m=1"], "stable")
    assert parsed.model_dir == "/mnt/models", "where KServe's storage initializer puts the predictor's STORAGE_URI"


def test_the_dagster_image_can_reach_the_cloud_instance_and_run_the_cloud_profiles():
    """The image installs the project with its own dependencies; those must include what the cloud instance and
    profiles import: dagster-postgres (run, event and schedule storage), dagster-k8s (launcher and executor), and the
    fsspec back ends of the three clouds' object stores."""
    import tomllib

    dockerfile = (REPO / "deploy" / "Dockerfile.dagster").read_text()
    assert "-c constraints.txt" in dockerfile and "install" in dockerfile and " ." in dockerfile
    dependencies = {d.split("==")[0].split("[")[0].split(">")[0].strip().lower() for d in
                    tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert {"dagster-postgres", "dagster-k8s", "s3fs", "gcsfs", "adlfs"} <= dependencies, dependencies
