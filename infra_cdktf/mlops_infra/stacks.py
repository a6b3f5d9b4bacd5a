"""Each environment is two stacks: the cloud's (network, cluster, database, bucket, registry, identities), then the
platform's on that cluster (`mlops_infra.platform`). Each cloud module imports only its own providers, only when used."""

from __future__ import annotations

import importlib

from cdktn import TerraformStack
from constructs import Construct

from mlops_infra.config import Environment
from mlops_infra.platform import PlatformStack

_STACKS = {"aws": "mlops_infra.aws:AwsEnvironment", "azure": "mlops_infra.azure:AzureEnvironment",
           "gcp": "mlops_infra.gcp:GcpEnvironment"}


def build(scope: Construct, env: Environment) -> tuple[TerraformStack, PlatformStack]:
    """The cloud stack `env.stack_id` and the platform stack `<stack_id>-platform`, which reads the first's outputs
    through cross-stack references (so cdktf deploys them in that order, and refuses the second alone)."""
    module, _, cls = _STACKS[env.cloud].partition(":")
    cloud = getattr(importlib.import_module(module), cls)(scope, env)
    return cloud, PlatformStack(scope, env, cloud.platform_inputs)
