"""The platform layer, one construct for every cloud: the Helm releases and Kubernetes objects that turn a bare
managed cluster into the MLOps platform (KServe, Argo, Dagster, MLflow, monitoring, policies, secrets, GPUs)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cdktn_provider_helm.provider import HelmProvider
from cdktn_provider_helm.release import Release
from cdktn_provider_kubernetes.namespace_v1 import NamespaceV1, NamespaceV1Metadata
from cdktn_provider_kubernetes.provider import KubernetesProvider, KubernetesProviderExec
from cdktn_provider_kubernetes.service_account_v1 import ServiceAccountV1, ServiceAccountV1Metadata
from constructs import Construct

from mlops_infra.charts import CHARTS
from mlops_infra.config import DATABASE_ADMIN, GPU_TAINT_KEY, SERVICE_ACCOUNTS, Environment

DEPLOY_DIR = Path(__file__).resolve().parents[2] / "deploy"


@dataclass
class ClusterAccess:
    """How Terraform's Helm and Kubernetes providers reach the new cluster: short-lived tokens, never static keys."""

    host: str
    cluster_ca_certificate: str
    exec_command: str | None = None
    exec_args: list[str] = field(default_factory=list)
    token: str | None = None

    def provider_args(self, exec_as_list: bool = False) -> dict[str, Any]:
        """Arguments for the Kubernetes provider (`exec` is a block list there) or Helm's `kubernetes` attribute."""
        args: dict[str, Any] = {"host": self.host, "cluster_ca_certificate": self.cluster_ca_certificate}
        if self.token:
            args["token"] = self.token
        if self.exec_command:
            exec_ = {"api_version": "client.authentication.k8s.io/v1beta1", "command": self.exec_command,
                     "args": self.exec_args}
            # jsii turns a dict into a struct only where a struct is expected directly, not inside a list.
            args["exec"] = [KubernetesProviderExec(**exec_)] if exec_as_list else exec_
        return args


@dataclass
class PlatformInputs:
    """What the cloud stack hands the platform layer."""

    access: ClusterAccess
    identity_annotations: dict[str, dict[str, str]]  # component → service-account annotations
    identity_labels: dict[str, str]  # extra labels on those service accounts (Azure Workload Identity needs one)
    secret_store: dict  # External Secrets ClusterSecretStore `spec.provider`
    database_host: str
    artifact_root: str  # MLflow artifacts, e.g. s3://bucket/mlflow
    io_env: dict[str, str]  # environment of Dagster runs: the profile's variables
    registry: str
    extra_manifests: list[dict] = field(default_factory=list)


def _yaml(values: dict) -> str:
    return json.dumps(values)  # JSON is YAML; Helm reads it as values


class PlatformLayer(Construct):
    """Shared by AWS, Azure and GCP; cloud differences arrive as `PlatformInputs`."""

    def __init__(self, scope: Construct, id_: str, *, env: Environment, inputs: PlatformInputs):
        super().__init__(scope, id_)
        self.env = env
        kube = KubernetesProvider(self, "kubernetes", **inputs.access.provider_args(exec_as_list=True))
        self.helm = HelmProvider(self, "helm", kubernetes=inputs.access.provider_args())
        self.releases: dict[str, Release] = {}

        namespaces = {ns for ns, _ in SERVICE_ACCOUNTS.values()}
        ns_objects = {ns: NamespaceV1(self, f"ns-{ns}", provider=kube, metadata=[NamespaceV1Metadata(name=ns, labels=env.labels)])
                      for ns in sorted(namespaces)}
        for component, (ns, name) in SERVICE_ACCOUNTS.items():
            ServiceAccountV1(self, f"sa-{component}", provider=kube, depends_on=[ns_objects[ns]], metadata=ServiceAccountV1Metadata(
                name=name, namespace=ns, annotations=inputs.identity_annotations[component],
                labels={**env.labels, **inputs.identity_labels},
            ))

        self.release("cert-manager", {"crds": {"enabled": True}})
        self.release("envoy-gateway", {})
        self.release("kserve-crd", {}, after=["cert-manager"])
        self.release("kserve", {"kserve": {"controller": {
            "deploymentMode": "Standard",
            "gateway": {"ingressGateway": {"enableGatewayApi": True, "className": "envoy"}},
        }}}, after=["kserve-crd", "envoy-gateway"])
        self.release("argo-workflows", {"controller": {"workflowNamespaces": ["argo", "dagster"]}})
        self.release("argo-cd", {"configs": {"params": {"server.insecure": False}}})
        self.release("kube-prometheus-stack", {
            "prometheus": {"prometheusSpec": {"serviceMonitorSelectorNilUsesHelmValues": False,
                                              "podMonitorSelectorNilUsesHelmValues": False,
                                              "retention": "30d" if env.stage == "prod" else "7d"}},
        })
        self.release("kyverno", {"admissionController": {"replicas": 3 if env.stage == "prod" else 1}})
        self.release("kyverno-policies", {"podSecurityStandard": "baseline",
                                          "validationFailureAction": "Enforce" if env.stage == "prod" else "Audit"},
                     after=["kyverno"])
        self.release("external-secrets", {"installCRDs": True})
        self.release("gpu-operator", {
            "driver": {"enabled": env.cloud != "gcp"},  # GKE installs the driver on its GPU nodes itself
            "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": True}},
            "daemonsets": {"tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"}]},
        }, after=["kube-prometheus-stack"])

        # One managed PostgreSQL server holds both databases; the instance creates `dagster`, this job `mlflow`.
        create_mlflow_db = {
            "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "create-mlflow-database", "namespace": "mlflow"},
            "spec": {"backoffLimit": 10, "template": {"spec": {"restartPolicy": "OnFailure", "containers": [{
                "name": "psql", "image": "postgres:16-alpine",
                "env": [{"name": "PGPASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-db", "key": "password"}}},
                        {"name": "PGHOST", "value": inputs.database_host}, {"name": "PGUSER", "value": DATABASE_ADMIN},
                        {"name": "PGDATABASE", "value": "dagster"}, {"name": "PGSSLMODE", "value": "require"}],
                "command": ["sh", "-c", "psql -tc \"SELECT 1 FROM pg_database WHERE datname='mlflow'\" | grep -q 1 "
                                        "|| psql -c 'CREATE DATABASE mlflow'"],
                "securityContext": {"allowPrivilegeEscalation": False, "runAsNonRoot": True, "runAsUser": 70},
            }]}}},
        }
        secrets = [
            {"apiVersion": "external-secrets.io/v1", "kind": "ClusterSecretStore",
             "metadata": {"name": "cloud-secrets"}, "spec": {"provider": inputs.secret_store}},
            *[_external_secret(ns, secret, f"{env.name}-{key}", prop)
              for ns, secret, key, prop in (("dagster", "dagster-postgresql-secret", "db-password", "postgresql-password"),
                                            ("mlflow", "mlflow-db", "db-password", "password"))],
        ]
        self.release("raw", {"resources": [*secrets, create_mlflow_db, *_deploy_manifests("kserve/networkpolicy.yaml"),
                                           *inputs.extra_manifests]}, name="platform-manifests",
                     after=["external-secrets"])

        _, dagster_sa = SERVICE_ACCOUNTS["dagster"]
        run_env = {**inputs.io_env, "MLOPS_PROFILE": env.cloud}
        self.release("dagster", {
            "global": {"serviceAccountName": dagster_sa},
            "serviceAccount": {"create": False, "name": dagster_sa},
            "postgresql": {"enabled": False, "postgresqlHost": inputs.database_host,
                           "postgresqlUsername": DATABASE_ADMIN, "postgresqlDatabase": "dagster"},
            "generatePostgresqlPasswordSecret": False,
            "runLauncher": {"type": "K8sRunLauncher", "config": {"k8sRunLauncher": {
                "envVars": [f"{k}={v}" for k, v in sorted(run_env.items())]}}},
            "dagsterDaemon": {"runCoordinator": {"enabled": True, "type": "QueuedRunCoordinator"}},
            "dagster-user-deployments": {"enabled": True, "deployments": [{
                "name": "mlops-platform", "port": 3030,
                "image": {"repository": f"{inputs.registry}/mlops-dagster", "tag": "latest", "pullPolicy": "Always"},
                "dagsterApiGrpcArgs": ["-m", "mlops_platform.definitions"],
                "env": [{"name": k, "value": v} for k, v in sorted(run_env.items())],
            }]},
            "dagsterInstance": {"concurrency": {"pools": {"defaultLimit": 2}}},
        }, after=["raw"])
        _, mlflow_sa = SERVICE_ACCOUNTS["mlflow"]
        self.release("mlflow", {
            "serviceAccount": {"create": False, "name": mlflow_sa},
            "backendStore": {"postgres": {"enabled": True, "host": inputs.database_host, "port": 5432,
                                          "database": "mlflow", "user": DATABASE_ADMIN},
                             "existingDatabaseSecret": {"name": "mlflow-db", "passwordKey": "password"}},
            "artifactRoot": {"defaultArtifactRoot": inputs.artifact_root, "proxiedArtifactStorage": True},
        }, after=["raw"])

    def release(self, key: str, values: dict, *, after: list[str] = (), name: str | None = None) -> Release:
        chart = CHARTS[key]
        release = Release(
            self, f"release-{key}", provider=self.helm,
            name=name or key, repository=chart.repository, chart=chart.chart, version=chart.version,
            namespace=chart.namespace, create_namespace=True, values=[_yaml(values)], timeout=900,
            depends_on=[self.releases[a] for a in after],
        )
        self.releases[key] = release
        return release


def _deploy_manifests(relative: str) -> list[dict]:
    """Kubernetes objects kept as YAML in the repository's deploy/ folder."""
    import yaml

    return [doc for doc in yaml.safe_load_all((DEPLOY_DIR / relative).read_text()) if doc]


def _external_secret(namespace: str, name: str, remote_key: str, secret_key: str) -> dict:
    return {
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": "ClusterSecretStore", "name": "cloud-secrets"},
                 "target": {"name": name}, "data": [{"secretKey": secret_key, "remoteRef": {"key": remote_key}}]},
    }
