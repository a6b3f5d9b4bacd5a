"""The six environments (a cloud stack and its platform stack each), synthesized once per session, for every infra
test module."""

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
def stacks(tmp_path_factory) -> dict[str, dict]:
    """Every stack, as `cdktf synth` writes it: one app, so that cross-stack references become outputs of the cloud
    stack and `terraform_remote_state` in the platform stack (`cdktn.Testing.synth` would leave them dangling)."""
    import cdktn

    from mlops_infra.config import ENVIRONMENTS
    from mlops_infra.stacks import build

    out = tmp_path_factory.mktemp("cdktf-out")
    app = cdktn.App(outdir=str(out))
    for env in ENVIRONMENTS.values():
        build(app, env)
    app.synth()
    return {path.parent.name: json.loads(path.read_text()) for path in sorted(out.glob("stacks/*/cdk.tf.json"))}


@pytest.fixture(scope="session")
def synthesized(stacks) -> dict[str, dict]:
    """Per environment, its two stacks' blocks side by side, for properties of the environment as a whole."""
    from mlops_infra.config import ENVIRONMENTS

    return {env_id: _merged(stacks[env_id], stacks[f"{env_id}-platform"]) for env_id in ENVIRONMENTS}


def _merged(*docs: dict) -> dict:
    merged: dict = {}
    for doc in docs:
        for block, body in doc.items():
            if block in ("resource", "data"):
                for kind, named in body.items():
                    target = merged.setdefault(block, {}).setdefault(kind, {})
                    assert not set(target) & set(named), (kind, set(target) & set(named))
                    target.update(named)
            elif block in ("output", "provider", "locals"):
                merged.setdefault(block, {}).update(body)
    return merged


def contract_outputs(doc: dict) -> set[str]:
    """The outputs we publish, not the ones cdktn adds for cross-stack references."""
    return {name for name in doc.get("output", {}) if not name.startswith("cross-stack-output-")}


def resources(doc: dict, kind: str) -> dict[str, dict]:
    return doc.get("resource", {}).get(kind, {})


def releases(doc: dict) -> dict[str, dict]:
    return {r["name"]: r for r in resources(doc, "helm_release").values()}


def values(release: dict) -> dict:
    return json.loads(release["values"][0])
