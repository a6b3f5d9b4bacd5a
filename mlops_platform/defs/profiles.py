"""Profiles: the one table that maps each deployment (`local`, `aws`, `azure`, `gcp`) to its resources and executor."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import dagster as dg

from mlops_platform.core.spec import MODELS_DIR_ENV
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
# What a pod must carry to get its service account's cloud identity. Azure Workload Identity's webhook injects the
# token only into pods labelled so (the service account carries the client-id annotation); IRSA and GKE need nothing.
# infra_cdktf puts the same label on the platform's pods (a test holds the two together).
WORKLOAD_IDENTITY_POD_LABELS = {"aws": {}, "azure": {"azure.workload.identity/use": "true"}, "gcp": {}}


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
            "io_manager": RunScopedPickleIOManager(base_uri=str(home / "dagster_io")),
        },
        executor=dg.in_process_executor,
    )


# The one switch between a cloud profile and its run on one machine (no Kubernetes here): steps in the run's own
# process, and the platform's KServe runtime on loopback instead of InferenceServices. Everything else is the cloud's.
EXECUTOR_ENV = "MLOPS_EXECUTOR"  # k8s (default) | in_process
SERVING_ENV = "MLOPS_SERVING"  # kserve (default) | local
CLOUDS = tuple(GPU_NODE_SELECTORS)


@dataclass(frozen=True)
class Variable:
    """An environment variable the platform reads: in which profiles, whether it must be set, and what it means."""

    name: str
    profiles: tuple[str, ...]
    meaning: str
    default: str | None = None  # None: the profile does not load without it
    needed_when: str = ""  # a condition under which it is needed, e.g. only with the cluster's serving


ALL = ("local", *CLOUDS)
KSERVE = f"{SERVING_ENV}=kserve"
# The one table of the platform's environment. `tests/defs/test_profiles.py` checks it against what the profiles
# read, and against the Dagster run environment that infra_cdktf sets; `make env-table` writes it into the README.
VARIABLES = (
    Variable(PROFILE_ENV, ALL, "which profile: `local`, `aws`, `azure` or `gcp`", "local"),
    Variable(MODELS_DIR_ENV, ALL, "folder of model specs (`*.yaml`, `*.yml`)", "examples/models"),
    Variable(HOME_ENV, ALL, "where the embedded default keeps its state (MLflow store, landing, server state)", "./var",
             f"local, or {SERVING_ENV}=local"),
    Variable("MLOPS_SERVING_PORT", ALL, "HTTP port of the local KServe runtime", "8080", f"local, or {SERVING_ENV}=local"),
    Variable("MLOPS_GRPC_PORT", ALL, "gRPC port of the local KServe runtime", "8081", f"local, or {SERVING_ENV}=local"),
    Variable("MLOPS_MLFLOW_UI_URL", ("local",), "MLflow UI, for links in Dagster metadata", "http://127.0.0.1:5000"),
    Variable("MLOPS_MLFLOW_UI_URL", CLOUDS, "MLflow UI as users reach it, for links in Dagster metadata"),
    Variable("MLFLOW_TRACKING_URI", CLOUDS, "MLflow tracking server (or a database URL, then set the artifact root)"),
    Variable("MLOPS_MLFLOW_ARTIFACT_ROOT", CLOUDS, "artifact root for new MLflow experiments, when the tracking URI "
             "is a database the client writes to itself", "the tracking server's own"),
    Variable("MLOPS_LANDING_URI", CLOUDS, "where raw batches land, per model (`s3://`, `gs://`, `abfss://`)"),
    Variable("MLOPS_QUARANTINE_URI", CLOUDS, "where bad batches are moved, with a note; same store as landing"),
    Variable("MLOPS_CAPTURE_URI", CLOUDS, "where served requests and feedback are captured for monitoring"),
    Variable("MLOPS_IO_URI", CLOUDS, "where Dagster keeps asset values between steps, one object per run"),
    Variable(EXECUTOR_ENV, CLOUDS, "`k8s`: each step a Kubernetes Job; `in_process`: steps in the run's process", "k8s"),
    Variable(SERVING_ENV, CLOUDS, "`kserve`: InferenceServices in the cluster; `local`: the KServe runtime on "
             "loopback", "kserve"),
    Variable("MLOPS_KSERVE_NAMESPACE", CLOUDS, "namespace of the InferenceServices", needed_when=KSERVE),
    Variable("MLOPS_SERVING_IMAGE", CLOUDS, "image of the platform's KServe runtime", needed_when=KSERVE),
    Variable("MLOPS_KSERVE_SERVICE_ACCOUNT", CLOUDS, "service account of the model server pods", needed_when=KSERVE),
    Variable("MLOPS_SERVING_BASE_URL", CLOUDS, "in-cluster URL of the inference gateway", needed_when=KSERVE),
    Variable("MLOPS_PROMETHEUS_URL", CLOUDS, "Prometheus that canary analysis queries", needed_when=KSERVE),
    Variable("MLOPS_KSERVE_DEPLOYMENT_MODE", CLOUDS, "KServe deployment mode", "Standard", KSERVE),
)


@dataclass(frozen=True)
class SdkVariable:
    """Read by a cloud SDK, never by platform code: credentials and endpoints come from each SDK's own chain."""

    name: str
    cloud: str
    in_the_cloud: str
    emulated: str


SDK_VARIABLES = (
    SdkVariable("AWS_REGION", "aws", "the region (set in the run environment)", "any region"),
    SdkVariable("AWS_ENDPOINT_URL", "aws", "unset: the S3 endpoint of the region", "moto's server on loopback"),
    SdkVariable("MLFLOW_S3_ENDPOINT_URL", "aws", "unset", "moto's server, for MLflow's own S3 client"),
    SdkVariable("AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY", "aws",
                "unset: IRSA injects `AWS_ROLE_ARN` and `AWS_WEB_IDENTITY_TOKEN_FILE`", "moto's test keys"),
    SdkVariable("STORAGE_EMULATOR_HOST", "gcp", "unset: workload identity through the metadata server",
                "the GCS emulator on loopback"),
    SdkVariable("AZURE_STORAGE_CONNECTION_STRING", "azure",
                "unset: the workload identity webhook injects `AZURE_CLIENT_ID`, `AZURE_TENANT_ID` and "
                "`AZURE_FEDERATED_TOKEN_FILE`", "Azurite's published development account"),
    SdkVariable("DAGSTER_PG_HOST, DAGSTER_PG_USER, DAGSTER_PG_PASSWORD, DAGSTER_PG_DB", "all clouds",
                "read by `deploy/dagster/instance.yaml`; the chart sets them", "PostgreSQL on loopback"),
)


def required_env(cloud: str, serving: str = "kserve") -> tuple[str, ...]:
    """The variables the cloud profile cannot load without, with the cluster's serving or the local one."""
    condition = f"{SERVING_ENV}={serving}"
    return tuple(v.name for v in VARIABLES
                 if cloud in v.profiles and v.default is None and v.needed_when in ("", condition))


def variables_table() -> str:
    """The README's table of the platform's environment, and of the SDK variables the emulated runs set."""
    lines = ["| Variable | Profiles | Default | Needed when | Meaning |", "| --- | --- | --- | --- | --- |"]
    for v in VARIABLES:
        where = "all" if v.profiles == ALL else ", ".join(v.profiles)
        lines.append(f"| `{v.name}` | {where} | {v.default or '**required**'} | {v.needed_when or 'always'} | {v.meaning} |")
    lines += ["", "| Read by the SDK | Cloud | In the cloud | In the emulated runs (`make e2e-*`) |",
              "| --- | --- | --- | --- |"]
    lines += [f"| `{v.name}` | {v.cloud} | {v.in_the_cloud} | {v.emulated} |" for v in SDK_VARIABLES]
    return "\n".join(lines) + "\n"


def _switch(variable: str, allowed: tuple[str, ...]) -> str:
    value = os.environ.get(variable, allowed[0])
    if value not in allowed:
        raise ValueError(f"{variable}={value!r}: choose one of {list(allowed)}")
    return value


def _cloud(cloud: str) -> Profile:
    """Every cloud is the same but for its GPU pools: MLflow's tracking server, KServe in the cluster, Kubernetes
    steps, and landing, capture and asset values on the cloud's object storage, whose URIs say which (`s3://`,
    `gs://`, `abfss://`); each SDK finds its credentials itself (workload identity, or the environment)."""
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
            pod_labels=WORKLOAD_IDENTITY_POD_LABELS[cloud],
        )
    return Profile(
        resources={
            "mlflow": mlflow,
            "landing": LandingResource(landing_uri=dg.EnvVar("MLOPS_LANDING_URI"),
                                       quarantine_uri=dg.EnvVar("MLOPS_QUARANTINE_URI"),
                                       capture_uri=dg.EnvVar("MLOPS_CAPTURE_URI")),
            "serving": serving,
            "io_manager": RunScopedPickleIOManager(base_uri=dg.EnvVar("MLOPS_IO_URI")),
        },
        executor=dg.in_process_executor if in_process else k8s_job_executor,
        gpu_step_tags=gpu_step_tags(cloud),
        cpu_step_tags=cpu_step_tags(),
    )


PROFILES: dict[str, Callable[[], Profile]] = {"local": _local, **{cloud: partial(_cloud, cloud) for cloud in CLOUDS}}


def current_profile_name() -> str:
    name = os.environ.get(PROFILE_ENV, "local")
    if name not in PROFILES:
        raise ValueError(f"{PROFILE_ENV}={name!r} is not a profile; choose one of {sorted(PROFILES)}")
    return name


def load_profile(name: str | None = None) -> Profile:
    return PROFILES[name or current_profile_name()]()
