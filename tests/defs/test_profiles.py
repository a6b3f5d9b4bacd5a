"""Profiles: the one table of resources per deployment, the environment each cloud profile reads, and the CLI
working under every profile or saying why it cannot."""

from __future__ import annotations

import ast
import inspect
import os
import re
import subprocess
import sys

import dagster as dg
import pytest

from mlops_platform.defs.profiles import PROFILES, VARIABLES, load_profile, required_env, variables_table
from mlops_platform.defs.resources import LandingResource, LocalServingResource, MLflowResource, ServingResource
from tests.support import REPO

CLOUDS = ["aws", "azure", "gcp"]


def env_vars_read(value) -> set[str]:
    """Every `dg.EnvVar` a resource (or IO manager) reads, nested resources included."""
    if isinstance(value, dg.EnvVar):
        return {value.env_var_name}
    if isinstance(value, (dg.ConfigurableResource, dg.ConfigurableIOManager)):
        return set().union(*(env_vars_read(v) for k, v in vars(value).items() if not k.startswith("_")))
    return set()


@pytest.mark.parametrize("serving", ["kserve", "local"])
@pytest.mark.parametrize("cloud", CLOUDS)
def test_the_variables_table_lists_exactly_what_each_cloud_profile_requires(cloud, serving, monkeypatch):
    monkeypatch.setenv("MLOPS_SERVING", serving)
    resources = load_profile(cloud).resources
    read = set().union(*(env_vars_read(r) for r in resources.values()))
    assert read == set(required_env(cloud, serving))


def test_every_variable_the_profiles_name_is_in_the_table():
    """Whatever `profiles.py` reads (`dg.EnvVar`, `os.environ.get`, a switch) is a string constant there; the table
    lists each of them, and nothing else."""
    from mlops_platform.core import spec
    from mlops_platform.defs import profiles

    named = set()
    for module in (profiles, spec):
        tree = ast.parse(inspect.getsource(module))
        named |= {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
                  and re.fullmatch(r"(MLOPS|MLFLOW)_[A-Z_]+", node.value)}
    assert named == {v.name for v in VARIABLES}


def test_the_readme_carries_the_generated_table():
    """`make env-table` writes it; a change to the table without the README fails here."""
    assert variables_table() in (REPO / "README.md").read_text(), "run `make env-table`"


def test_every_profile_binds_the_same_resource_kinds(tmp_path, monkeypatch):
    monkeypatch.setenv("MLOPS_HOME", str(tmp_path))
    for name in PROFILES:
        resources = load_profile(name).resources
        assert set(resources) == {"mlflow", "landing", "serving", "io_manager"}, name
        assert isinstance(resources["mlflow"], MLflowResource)
        assert isinstance(resources["landing"], LandingResource)
        assert isinstance(resources["serving"], ServingResource)
    assert isinstance(load_profile("local").resources["serving"], LocalServingResource)


def cli(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "MLFLOW_"))}
    return subprocess.run([sys.executable, "-m", "mlops_platform.cli", *args], cwd=REPO, env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def test_cli_under_a_cloud_profile_names_the_missing_environment():
    result = cli("predict", "--model", "breast_cancer", MLOPS_PROFILE="aws")
    assert result.returncode == 1
    assert "predict under the 'aws' profile: the serving resource needs these environment variables:" in result.stderr
    assert "MLOPS_KSERVE_NAMESPACE" in result.stderr and "Traceback" not in result.stderr


def test_cli_stop_in_a_cluster_says_why_it_cannot():
    cluster_env = {**{name: "http://set.invalid" for name in required_env("gcp")}, "MLOPS_KSERVE_NAMESPACE": "models"}
    result = cli("stop", MLOPS_PROFILE="gcp", **cluster_env)
    assert result.returncode == 1
    assert "kubectl delete inferenceservice NAME -n models" in result.stderr and "Traceback" not in result.stderr
