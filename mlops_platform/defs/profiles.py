"""Profiles: the one table that maps each deployment (`local`, `aws`, `azure`, `gcp`) to its resources and executor."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_platform.defs.resources import (
    KServeServingResource,
    LandingResource,
    LocalServingResource,
    MLflowResource,
    RunScopedPickleIOManager,
)

PROFILE_ENV = "MLOPS_PROFILE"
HOME_ENV = "MLOPS_HOME"
PROJECT_ROOT = Path(__file__).resolve().parents[2]


GPU_TAINT = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
# AKS taints every spot pool itself; pods bound for the (spot) GPU pool must tolerate that too.
EXTRA_GPU_TOLERATIONS = {
    "azure": [{"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot", "effect": "NoSchedule"}],
}
# Where GPU steps land in each cloud: the node labels of the GPU pools that infra_cdktf provisions.
GPU_NODE_SELECTORS = {
    "aws": {"karpenter.sh/nodepool": "gpu"},
    "azure": {"kubernetes.azure.com/agentpool": "gpu"},
    "gcp": {"cloud.google.com/gke-accelerator": "nvidia-l4"},
}


@dataclass(frozen=True)
class Profile:
    resources: dict[str, Any]
    executor: dg.ExecutorDefinition
    gpu_step_tags: dict[str, Any] = field(default_factory=dict)
    cpu_step_tags: dict[str, Any] = field(default_factory=dict)


def gpu_step_tags(cloud: str, gpus: int = 1, memory: str = "24Gi") -> dict[str, Any]:
    """`dagster-k8s/config` for a GPU training step: a GPU limit, memory, the GPU taint's toleration, the GPU pool."""
    return {"dagster-k8s/config": {
        "container_config": {"resources": {
            "requests": {"cpu": "4", "memory": memory, "nvidia.com/gpu": str(gpus)},
            "limits": {"memory": memory, "nvidia.com/gpu": str(gpus)},
        }},
        "pod_spec_config": {"node_selector": GPU_NODE_SELECTORS[cloud],
                            "tolerations": [GPU_TAINT, *EXTRA_GPU_TOLERATIONS.get(cloud, [])]},
    }}


def cpu_step_tags() -> dict[str, Any]:
    """`dagster-k8s/config` for every other step: CPU and memory only, never a GPU."""
    return {"dagster-k8s/config": {"container_config": {"resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "4Gi"},
    }}}}


def local_home() -> Path:
    """Everything the embedded default writes (MLflow store, landing, quarantine, server state) lives here."""
    return Path(os.environ.get(HOME_ENV) or PROJECT_ROOT / "var").resolve()


def _local_serving(mlflow: MLflowResource, home: Path, capture_uri: Any) -> LocalServingResource:
    return LocalServingResource(
        mlflow=mlflow,
        host="127.0.0.1",
        port=int(os.environ.get("MLOPS_SERVING_PORT", "8080")),
        grpc_port=int(os.environ.get("MLOPS_GRPC_PORT", "8081")),
        state_dir=str(home / "serving"),
        capture_uri=capture_uri,
    )


def _local() -> Profile:
    home = local_home()
    mlflow = MLflowResource(
        tracking_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        artifact_root=str(home / "mlflow" / "artifacts"),
        ui_url=os.environ.get("MLOPS_MLFLOW_UI_URL", "http://127.0.0.1:5000"),
    )
    (home / "mlflow").mkdir(parents=True, exist_ok=True)
    return Profile(
        resources={
            "mlflow": mlflow,
            "landing": LandingResource(landing_uri=str(home / "landing"), quarantine_uri=str(home / "quarantine"),
                                       capture_uri=str(home / "capture")),
            "serving": _local_serving(mlflow, home, str(home / "capture")),
            # One file per run and asset: concurrent runs of a model never read each other's hand-offs.
            "io_manager": RunScopedPickleIOManager(base_dir=str(home / "dagster_io")),
        },
        executor=dg.in_process_executor,
    )


# The environment each cloud profile reads, set in the Dagster run environment by infra_cdktf (`io_env` there).
CLOUD_ENV = ("MLFLOW_TRACKING_URI", "MLOPS_MLFLOW_UI_URL", "MLOPS_LANDING_URI", "MLOPS_QUARANTINE_URI", "MLOPS_CAPTURE_URI",
             "MLOPS_KSERVE_NAMESPACE", "MLOPS_SERVING_IMAGE", "MLOPS_KSERVE_SERVICE_ACCOUNT", "MLOPS_SERVING_BASE_URL",
             "MLOPS_PROMETHEUS_URL")
STORAGE_ENV = {
    "aws": ("AWS_REGION", "MLOPS_BUCKET"),
    "azure": ("MLOPS_STORAGE_ACCOUNT", "MLOPS_CONTAINER"),
    "gcp": ("MLOPS_GCP_PROJECT", "MLOPS_BUCKET"),
}


def profile_env(cloud: str) -> tuple[str, ...]:
    """Every variable the cloud profile reads with `dg.EnvVar`."""
    return (*CLOUD_ENV, *STORAGE_ENV[cloud])


# The one switch between a cloud profile and its run on one machine (no Kubernetes here): steps in the run's own
# process, and the platform's KServe runtime on loopback instead of InferenceServices. Everything else is the cloud's.
EXECUTOR_ENV = "MLOPS_EXECUTOR"  # k8s (default) | in_process
SERVING_ENV = "MLOPS_SERVING"  # kserve (default) | local


def _switch(variable: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(variable, allowed[0])
    if value not in allowed:
        raise ValueError(f"{variable}={value!r}: choose one of {list(allowed)}")
    return value


def _cloud(cloud: str, io_manager: dg.ConfigurableIOManager) -> Profile:
    """What every cloud shares: MLflow's tracking server, KServe in the cluster, Kubernetes steps, and the landing
    store on the cloud's object storage (its URI says which); only the IO manager's storage differs."""
    from dagster_k8s import k8s_job_executor

    mlflow = MLflowResource(tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"), ui_url=dg.EnvVar("MLOPS_MLFLOW_UI_URL"),
                            # Set where the tracking URI is a database the client writes to itself (no tracking server).
                            artifact_root=os.environ.get("MLOPS_MLFLOW_ARTIFACT_ROOT"))
    in_process = _switch(EXECUTOR_ENV, ("k8s", "in_process")) == "in_process"
    local_serving = _switch(SERVING_ENV, ("kserve", "local")) == "local"
    if local_serving:
        serving: Any = _local_serving(mlflow, local_home(), dg.EnvVar("MLOPS_CAPTURE_URI"))
    else:
        serving = KServeServingResource(
            namespace=dg.EnvVar("MLOPS_KSERVE_NAMESPACE"),
            image=dg.EnvVar("MLOPS_SERVING_IMAGE"),
            tracking_uri=dg.EnvVar("MLFLOW_TRACKING_URI"),
            service_account=dg.EnvVar("MLOPS_KSERVE_SERVICE_ACCOUNT"),
            base_url=dg.EnvVar("MLOPS_SERVING_BASE_URL"),
            prometheus_url=dg.EnvVar("MLOPS_PROMETHEUS_URL"),
            deployment_mode=os.environ.get("MLOPS_KSERVE_DEPLOYMENT_MODE", "Standard"),
            capture_uri=dg.EnvVar("MLOPS_CAPTURE_URI"),
        )
    return Profile(
        resources={
            "mlflow": mlflow,
            "landing": LandingResource(landing_uri=dg.EnvVar("MLOPS_LANDING_URI"),
                                       quarantine_uri=dg.EnvVar("MLOPS_QUARANTINE_URI"),
                                       capture_uri=dg.EnvVar("MLOPS_CAPTURE_URI")),
            "serving": serving,
            "io_manager": io_manager,
        },
        executor=dg.in_process_executor if in_process else k8s_job_executor,
        gpu_step_tags=gpu_step_tags(cloud),
        cpu_step_tags=cpu_step_tags(),
    )


def _aws() -> Profile:
    from dagster_aws.s3 import S3PickleIOManager, S3Resource

    s3 = S3Resource(region_name=dg.EnvVar("AWS_REGION"))
    return _cloud("aws", S3PickleIOManager(s3_resource=s3, s3_bucket=dg.EnvVar("MLOPS_BUCKET"), s3_prefix="dagster-io"))


def _azure() -> Profile:
    from dagster_azure.adls2 import ADLS2DefaultAzureCredential, ADLS2PickleIOManager, ADLS2Resource

    adls2 = ADLS2Resource(storage_account=dg.EnvVar("MLOPS_STORAGE_ACCOUNT"),
                          credential=ADLS2DefaultAzureCredential(kwargs={}))  # workload identity, no static keys
    io = ADLS2PickleIOManager(adls2=adls2, adls2_file_system=dg.EnvVar("MLOPS_CONTAINER"), adls2_prefix="dagster-io")
    # adlfs reads the account from the abfss:// URI and, with no key given, uses DefaultAzureCredential.
    return _cloud("azure", io)


def _gcp() -> Profile:
    from dagster_gcp import GCSPickleIOManager, GCSResource

    gcs = GCSResource(project=dg.EnvVar("MLOPS_GCP_PROJECT"))
    return _cloud("gcp", GCSPickleIOManager(gcs=gcs, gcs_bucket=dg.EnvVar("MLOPS_BUCKET"), gcs_prefix="dagster-io"))


PROFILES: dict[str, Callable[[], Profile]] = {"local": _local, "aws": _aws, "azure": _azure, "gcp": _gcp}


def current_profile_name() -> str:
    name = os.environ.get(PROFILE_ENV, "local")
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


def load_profile(name: str | None = None) -> Profile:
    return PROFILES[name or current_profile_name()]()
