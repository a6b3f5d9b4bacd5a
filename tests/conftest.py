"""Shared fixtures and the test tiers.

Each folder mirrors a package: `core`, `serving`, `integrations`, `defs`, `infra`, `e2e` for whole runs and
`reliability` for faults injected into real processes. Every
test is marked with its folder's name; tests that start real processes or run jobs are also marked `slow`, and
`make test-fast` runs the rest.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import REPO, free_port
from tests.support import platform_home as _platform_home

__all__ = ["REPO", "free_port"]

TIERS = ("core", "serving", "integrations", "defs", "infra", "e2e", "reliability")


def pytest_collection_modifyitems(config, items):
    for item in items:
        tier = Path(item.fspath).parent.name
        if tier in TIERS:
            item.add_marker(getattr(pytest.mark, tier))
        if tier in ("e2e", "reliability") or "platform_home" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def platform_home(tmp_path_factory):
    """MLOPS_HOME, DAGSTER_HOME and the serving port point into a fresh temp folder for one test module."""
    with _platform_home(tmp_path_factory.mktemp("platform")) as home:
        yield home
