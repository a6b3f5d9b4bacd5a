"""The six stacks, synthesized once per session with cdktn.Testing, for every infra test module."""

from __future__ import annotations

import json
import os
import sys

import pytest

from tests.support import REPO

sys.path.insert(0, str(REPO / "infra_cdktf"))
os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
os.environ.setdefault("CHECKPOINT_DISABLE", "1")


@pytest.fixture(scope="session")
def synthesized() -> dict[str, dict]:
    """Each stack in a throwaway app (Testing.synth_scope cannot take a Python callback through jsii)."""
    import cdktn

    from mlops_infra.config import ENVIRONMENTS
    from mlops_infra.stacks import build

    out = {}
    for stack_id, env in ENVIRONMENTS.items():
        stack = build(cdktn.Testing.app(), env)
        out[stack_id] = json.loads(cdktn.Testing.synth(stack))
    return out


def resources(doc: dict, kind: str) -> dict[str, dict]:
    return doc.get("resource", {}).get(kind, {})


def releases(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in resources(doc, "helm_release").values()}


def values(release: dict) -> dict:
    return json.loads(release["values"][0])
