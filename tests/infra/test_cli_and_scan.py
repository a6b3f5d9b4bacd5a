"""The pinned `cdktf` CLI synthesizes every stack, and checkov finds nothing beyond the reviewed skip list.
`terraform validate` runs only when MLOPS_TERRAFORM_VALIDATE=1 (it needs a terraform binary and provider downloads)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import REPO

INFRA = REPO / "infra_cdktf"
CLI = INFRA / "node_modules" / ".bin" / "cdktf"
CHECKOV = REPO / ".venv-checkov" / "bin" / "checkov"
ENV = {**os.environ, "JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION": "20", "CHECKPOINT_DISABLE": "1",
       "CDKTF_DISABLE_PLUGIN_CACHE_ENV": "1"}


@pytest.fixture(scope="module")
def cli_out(tmp_path_factory):
    if not CLI.exists():
        pytest.fail("infra_cdktf/node_modules is missing: `make infra-tools` installs the pinned cdktf CLI")
    out = tmp_path_factory.mktemp("cdktf") / "out"
    result = subprocess.run([str(CLI), "synth", "--output", str(out)], cwd=INFRA, env=ENV, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


ENVIRONMENTS = ["aws-dev", "aws-prod", "azure-dev", "azure-prod", "gcp-dev", "gcp-prod"]


def test_cdktf_cli_synthesizes_every_stack_and_orders_each_pair(cli_out):
    """`cdktf deploy aws-dev aws-dev-platform` applies the cloud stack first: the CLI orders stacks by the
    dependencies in its manifest, and refuses the platform stack without its cloud stack."""
    manifest = json.loads((cli_out / "manifest.json").read_text())
    assert sorted(manifest["stacks"]) == sorted([*ENVIRONMENTS, *[f"{e}-platform" for e in ENVIRONMENTS]])
    for env in ENVIRONMENTS:
        assert manifest["stacks"][env]["dependencies"] == []
        assert manifest["stacks"][f"{env}-platform"]["dependencies"] == [env]
    for stack in manifest["stacks"]:
        doc = json.loads((cli_out / "stacks" / stack / "cdk.tf.json").read_text())
        assert doc["resource"], stack


def test_checkov_finds_nothing_beyond_the_reviewed_skips(cli_out):
    if not CHECKOV.exists():
        pytest.fail(".venv-checkov is missing: `make infra-tools` creates checkov's own virtualenv")
    result = subprocess.run([sys.executable, str(INFRA / "scan.py"), "--checkov", str(CHECKOV), "--out", str(cli_out)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert result.stdout.count(" 0 failed") == 2 * len(ENVIRONMENTS)


@pytest.mark.skipif(os.environ.get("MLOPS_TERRAFORM_VALIDATE") != "1", reason="opt-in: set MLOPS_TERRAFORM_VALIDATE=1")
@pytest.mark.parametrize("stack", ["aws-dev", "aws-dev-platform", "azure-dev", "azure-dev-platform", "gcp-dev",
                                   "gcp-dev-platform"])
def test_terraform_validate(cli_out, stack):
    terraform = shutil.which("terraform")
    assert terraform, "MLOPS_TERRAFORM_VALIDATE=1 needs terraform on PATH"
    workdir = cli_out / "stacks" / stack
    for command in (["init", "-backend=false", "-input=false"], ["validate"]):
        result = subprocess.run([terraform, *command], cwd=workdir, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
