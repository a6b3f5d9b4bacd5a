"""The CDK Terrain app: six environments, `aws|azure|gcp` × `dev|prod`, each a cloud stack and its platform stack
(`aws-dev`, `aws-dev-platform`). `cdktf synth` runs this file; MLOPS_STACKS=aws-dev,... picks environments."""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from cdktn import App

from mlops_infra.config import ENVIRONMENTS
from mlops_infra.stacks import build


def main() -> None:
    app = App()
    wanted = [s for s in os.environ.get("MLOPS_STACKS", "").split(",") if s] or list(ENVIRONMENTS)
    for stack_id in wanted:
        build(app, ENVIRONMENTS[stack_id])
    app.synth()


if __name__ == "__main__":
    main()
