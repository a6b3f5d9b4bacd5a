"""Shared fixtures: an isolated platform home (MLflow on SQLite, Dagster instance, landing) and a free loopback port."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def platform_home(tmp_path_factory, request):
    """MLOPS_HOME, DAGSTER_HOME and the serving port point into a fresh temp folder for one test module."""
    home = tmp_path_factory.mktemp("mlops_home")
    dagster_home = home / "dagster_home"
    dagster_home.mkdir()
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    patch = pytest.MonkeyPatch()
    patch.setenv("MLOPS_HOME", str(home))
    patch.setenv("DAGSTER_HOME", str(dagster_home))
    patch.setenv("MLOPS_SERVING_PORT", str(free_port()))
    patch.setenv("MLOPS_PROFILE", "local")
    patch.delenv("MLOPS_MODELS_DIR", raising=False)
    yield home
    from mlops_platform.defs.profiles import load_profile

    load_profile("local").resources["serving"].stop()
    patch.undo()
