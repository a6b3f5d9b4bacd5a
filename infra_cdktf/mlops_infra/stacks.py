"""Which stack class builds which cloud; each module imports only its own providers, and only when used."""

from __future__ import annotations

import importlib

from cdktn import TerraformStack
from constructs import Construct

from mlops_infra.config import Environment

_STACKS = {"aws": "mlops_infra.aws:AwsEnvironment", "azure": "mlops_infra.azure:AzureEnvironment",
           "gcp": "mlops_infra.gcp:GcpEnvironment"}


def build(scope: Construct, env: Environment) -> TerraformStack:
    module, _, cls = _STACKS[env.cloud].partition(":")
    return getattr(importlib.import_module(module), cls)(scope, env)
