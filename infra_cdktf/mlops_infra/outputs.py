"""The output contract: every environment publishes the same names, each the lower-cased name of the environment
variable the Dagster cloud profile reads (`mlops_platform/defs/profiles.py`), plus what an operator needs."""

from __future__ import annotations

from cdktn import TerraformOutput
from constructs import Construct

# output name → what it is; identical for AWS, Azure and GCP
CONTRACT: dict[str, str] = {
    "cluster_endpoint": "Kubernetes API endpoint",
    "kubeconfig_command": "command that writes a kubeconfig entry for the cluster",
    "mlops_bucket": "bucket (or storage container) that holds every URI below and MLflow's artifacts",
    "mlops_landing_uri": "landing location of raw batches → MLOPS_LANDING_URI",
    "mlops_quarantine_uri": "quarantine location of bad batches → MLOPS_QUARANTINE_URI",
    "mlops_capture_uri": "captured requests and feedback of the served models → MLOPS_CAPTURE_URI",
    "mlops_io_uri": "Dagster's asset values between steps, one object per run → MLOPS_IO_URI",
    "dagster_pg_host": "managed PostgreSQL host → DAGSTER_PG_HOST (MLflow uses the same server)",
    "mlflow_tracking_uri": "in-cluster MLflow tracking server → MLFLOW_TRACKING_URI",
    "registry_url": "container registry for the serving and Dagster images → MLOPS_SERVING_IMAGE's prefix",
    "identity_dagster": "cloud identity bound to the dagster service account",
    "identity_mlflow": "cloud identity bound to the mlflow service account",
    "identity_kserve": "cloud identity bound to the kserve-models service account",
}

MLFLOW_IN_CLUSTER = "http://mlflow.mlflow.svc.cluster.local:80"


def publish(scope: Construct, values: dict[str, str]) -> None:
    missing = sorted(set(CONTRACT) - set(values))
    extra = sorted(set(values) - set(CONTRACT))
    if missing or extra:
        raise ValueError(f"output contract broken: missing {missing}, not in contract {extra}")
    for name, value in values.items():
        TerraformOutput(scope, name, value=value, description=CONTRACT[name])
