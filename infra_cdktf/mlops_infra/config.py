"""Typed settings for every environment: the only place where dev and prod differ."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from mlops_infra.ui_access import UiAccess

Cloud = Literal["aws", "azure", "gcp"]
Stage = Literal["dev", "prod"]

KUBERNETES_VERSION = "1.33"


def _image_tag() -> str:
    """The tag of the platform's images: the project's version, or `MLOPS_IMAGE_TAG` at synth time (e.g. a commit).
    Never `latest`: the registries are immutable, so a tag can be pushed once and names one image for good."""
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    return os.environ.get("MLOPS_IMAGE_TAG") or tomllib.loads(pyproject.read_text())["project"]["version"]


IMAGE_TAG = _image_tag()
GPU_TAINT_KEY = "nvidia.com/gpu"
DATABASE_ADMIN = "mlops_admin"

# Kubernetes service accounts that get a cloud identity (workload identity), by component: (namespace, name).
SERVICE_ACCOUNTS: dict[str, tuple[str, str]] = {
    "dagster": ("dagster", "dagster"),
    "mlflow": ("mlflow", "mlflow"),
    "kserve": ("models", "kserve-models"),
}


@dataclass(frozen=True)
class NodePool:
    """One node pool: machine type, bounds, and whether it runs on spot capacity."""

    machine_type: str
    min_size: int
    max_size: int
    spot: bool
    gpu: bool = False


@dataclass(frozen=True)
class Environment:
    cloud: Cloud
    stage: Stage
    region: str
    network_cidr: str
    system_pool: NodePool
    training_pool: NodePool
    gpu_pool: NodePool
    ha_control_plane: bool
    private_api_endpoint: bool
    deletion_protection: bool
    backup_retention_days: int
    database_tier: str
    database_storage_gb: int
    database_high_availability: bool
    gpu_accelerator: str = ""
    zones: tuple[str, ...] = field(default_factory=tuple)
    kubernetes_version: str = KUBERNETES_VERSION
    ui_access: UiAccess | None = None  # browser access to the UIs behind an OIDC login (mlops_infra/ui_access.py)

    @property
    def name(self) -> str:
        """Prefix of every resource name, e.g. `mlops-dev`."""
        return f"mlops-{self.stage}"

    @property
    def image_tag(self) -> str:
        return IMAGE_TAG

    @property
    def stack_id(self) -> str:
        return f"{self.cloud}-{self.stage}"

    @property
    def labels(self) -> dict[str, str]:
        return {"project": "mlops-platform", "environment": self.stage, "managed-by": "cdktn"}


def _pair(cloud: Cloud, region: str, cidrs: tuple[str, str], zones: tuple[str, ...], machines: dict[str, str],
          accelerator: str = ""):
    """dev and prod of one cloud: prod is highly available, private, protected and keeps backups longer."""
    dev = Environment(
        cloud=cloud, stage="dev", region=region, network_cidr=cidrs[0], zones=zones,
        system_pool=NodePool(machines["system"], 1, 3, spot=False),
        training_pool=NodePool(machines["training"], 0, 4, spot=True),
        gpu_pool=NodePool(machines["gpu"], 0, 2, spot=True, gpu=True),
        ha_control_plane=False, private_api_endpoint=False, deletion_protection=False, backup_retention_days=7,
        database_tier=machines["db_dev"], database_storage_gb=20, database_high_availability=False,
        gpu_accelerator=accelerator, ui_access=UiAccess.from_environment(cloud, "dev"),
    )
    prod = Environment(
        cloud=cloud, stage="prod", region=region, network_cidr=cidrs[1], zones=zones,
        system_pool=NodePool(machines["system"], 3, 6, spot=False),
        training_pool=NodePool(machines["training"], 0, 10, spot=True),
        gpu_pool=NodePool(machines["gpu"], 0, 8, spot=True, gpu=True),
        ha_control_plane=True, private_api_endpoint=True, deletion_protection=True, backup_retention_days=30,
        database_tier=machines["db_prod"], database_storage_gb=100, database_high_availability=True,
        gpu_accelerator=accelerator, ui_access=UiAccess.from_environment(cloud, "prod"),
    )
    return dev, prod


_AWS = _pair("aws", "eu-west-1", ("10.10.0.0/16", "10.11.0.0/16"), ("eu-west-1a", "eu-west-1b", "eu-west-1c"),
             {"system": "m6i.large", "training": "c6i.2xlarge", "gpu": "g6.2xlarge",
              "db_dev": "db.t4g.medium", "db_prod": "db.m7g.large"})
_AZURE = _pair("azure", "westeurope", ("10.20.0.0/16", "10.21.0.0/16"), ("1", "2", "3"),
               {"system": "Standard_D4s_v5", "training": "Standard_F8s_v2", "gpu": "Standard_NC8as_T4_v3",
                "db_dev": "B_Standard_B2s", "db_prod": "GP_Standard_D4ds_v5"})
_GCP = _pair("gcp", "europe-west4", ("10.30.0.0/16", "10.31.0.0/16"), ("europe-west4-a", "europe-west4-b", "europe-west4-c"),
             {"system": "e2-standard-4", "training": "c2-standard-8", "gpu": "g2-standard-8",
              "db_dev": "db-custom-2-7680", "db_prod": "db-custom-4-15360"}, accelerator="nvidia-l4")

ENVIRONMENTS: dict[str, Environment] = {e.stack_id: e for e in (*_AWS, *_AZURE, *_GCP)}
