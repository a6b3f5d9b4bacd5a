"""The platform stack, one for every cloud: the Helm releases and Kubernetes objects that turn a bare managed cluster
into the MLOps platform (KServe, Dagster, MLflow, monitoring, policies, secrets, GPUs).

It is a stack of its own, applied after the cloud stack that makes the cluster (`cdktf deploy aws-dev
aws-dev-platform`): its Helm and Kubernetes providers are configured from the cluster's endpoint and CA, which
Terraform knows at plan time only once the cluster exists. In one stack they are unknown on the first plan, and the
providers fail or talk to the wrong cluster (the Kubernetes provider's documentation warns against exactly that)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from cdktn import TerraformStack
from cdktn_provider_helm.provider import HelmProvider
from cdktn_provider_helm.release import Release
from cdktn_provider_kubernetes.namespace_v1 import NamespaceV1, NamespaceV1Metadata
from cdktn_provider_kubernetes.provider import KubernetesProvider, KubernetesProviderExec
from cdktn_provider_kubernetes.service_account_v1 import ServiceAccountV1, ServiceAccountV1Metadata
from constructs import Construct

from mlops_infra.charts import CHARTS
from mlops_infra.config import DATABASE_ADMIN, GPU_TAINT_KEY, SERVICE_ACCOUNTS, Environment
from mlops_infra.dashboards import dashboard_config_maps
from mlops_infra.outputs import MLFLOW_IN_CLUSTER
from mlops_infra.policies import admission_policies
from mlops_infra.ui_access import ui_access_objects

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
class ExtraRelease:
    """A cloud's own chart on top of the shared ones (Karpenter on AWS), as `PlatformStack.release` takes it."""

    key: str
    values: dict
    chart: str | None = None
    name: str | None = None
    after: tuple[str, ...] = ()


@dataclass
class PlatformInputs:
    """What the cloud stack hands the platform stack. Values that are the cloud stack's resources become cross-stack
    references: cdktn publishes them as outputs there and reads them back through `terraform_remote_state` here."""

    # Builds, inside the platform stack, how its providers reach the cluster: a token is fetched there at apply time,
    # never carried over from the cloud stack's state, where it would have expired.
    access: Callable[[Construct], ClusterAccess]
    identity_annotations: dict[str, dict[str, str]]  # component → service-account annotations
    secret_store: dict  # External Secrets ClusterSecretStore `spec.provider`
    database_host: str
    object_root: str  # the platform's bucket as a URI: s3://bucket, gs://bucket, abfss://container@account.dfs...
    registry: str
    sdk_env: dict[str, str] = field(default_factory=dict)  # what the cloud's SDK needs beside workload identity
    mlflow_artifact_root: str | None = None  # where MLflow's own client reaches the bucket, if not `object_root`
    gpu_tolerations: list[dict] = field(default_factory=list)  # taints the cloud puts on GPU nodes beside ours
    # Labels on every pod that uses a cloud identity: Azure Workload Identity acts on pods labelled so, not on service
    # accounts (Dagster's runs, steps and code server, MLflow's server, External Secrets; the predictors get it from
    # the profile, WORKLOAD_IDENTITY_POD_LABELS in mlops_platform/defs/profiles.py).
    pod_identity_labels: dict[str, str] = field(default_factory=dict)
    extra_releases: list[ExtraRelease] = field(default_factory=list)
    chart_values: dict[str, dict] = field(default_factory=dict)  # chart key → the cloud's values on top of ours


def _yaml(values: dict) -> str:
    return json.dumps(values)  # JSON is YAML; Helm reads it as values


def platform_stack_id(env: Environment) -> str:
    return f"{env.stack_id}-platform"


class PlatformStack(TerraformStack):
    """Shared by AWS, Azure and GCP; cloud differences arrive as `PlatformInputs`."""

    def __init__(self, scope: Construct, env: Environment, inputs: PlatformInputs):
        super().__init__(scope, platform_stack_id(env))
        self.env = env
        self.inputs = inputs
        access = inputs.access(self)
        kube = KubernetesProvider(self, "kubernetes", **access.provider_args(exec_as_list=True))
        self.helm = HelmProvider(self, "helm", kubernetes=access.provider_args())
        self.releases: dict[str, Release] = {}

        namespaces = {ns for ns, _ in SERVICE_ACCOUNTS.values()}
        ns_objects = {ns: NamespaceV1(self, f"ns-{ns}", provider=kube,
                                      metadata=[NamespaceV1Metadata(name=ns, labels=env.labels)])
                      for ns in sorted(namespaces)}
        for component, (ns, name) in SERVICE_ACCOUNTS.items():
            ServiceAccountV1(self, f"sa-{component}", provider=kube, depends_on=[ns_objects[ns]], metadata=ServiceAccountV1Metadata(
                name=name, namespace=ns, annotations=inputs.identity_annotations[component],
                labels=env.labels,
            ))

        self.release("cert-manager", {"crds": {"enabled": True}})
        self.release("envoy-gateway", {})
        self.release("kserve-crd", {}, after=["cert-manager"])
        self.release("kserve", {"kserve": {"controller": {
            "deploymentMode": "Standard",
            # The Gateway is the platform's own (deploy/gateway/), so the chart creates none.
            "gateway": {"ingressGateway": {"enableGatewayApi": True, "className": "envoy", "createGateway": False,
                                           "kserveGateway": "kserve/kserve-ingress-gateway"}},
        }}}, after=["kserve-crd", "envoy-gateway"])
        self.release("gateway", {"resources": _deploy_manifests("gateway/gateway.yaml")}, chart="raw",
                     name="platform-gateway", after=["envoy-gateway", "kserve"])
        self.release("kube-prometheus-stack", {
            "prometheus": {"prometheusSpec": {
                "serviceMonitorSelectorNilUsesHelmValues": False, "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "retention": "30d" if env.stage == "prod" else "7d",
                # On a volume, not the pod's emptyDir: the history canary analysis and the alerts look back over
                # survives a restart or a rescheduled pod.
                "storageSpec": {"volumeClaimTemplate": {"spec": {
                    "accessModes": ["ReadWriteOnce"],
                    "resources": {"requests": {"storage": "100Gi" if env.stage == "prod" else "20Gi"}}}}},
            }},
        })
        self.release("monitoring", {"resources": [*_deploy_manifests("monitoring/podmonitor.yaml"),
                                                  *_deploy_manifests("monitoring/rules.yaml"),
                                                  *dashboard_config_maps()]},
                     chart="raw", name="platform-monitoring", after=["kube-prometheus-stack"])
        self.release("kyverno", {"admissionController": {"replicas": 3 if env.stage == "prod" else 1}})
        self.release("kyverno-policies", {
            "podSecurityStandard": "baseline",
            "validationFailureAction": "Enforce" if env.stage == "prod" else "Audit",
            # The GPU operator's DaemonSets and node-exporter need the host (privileged, host paths, namespaces and
            # ports) by design: enforced, these policies would keep GPUs and node metrics from ever coming up.
            # The chart installs CEL ValidatingPolicies; `policyExclude` would apply to its legacy ClusterPolicies only.
            "vpolExcludeByPolicy": {policy: {"excludeNamespaces": list(HOST_NAMESPACES)} for policy in HOST_POLICIES},
        }, after=["kyverno"])
        self.release("external-secrets", {"installCRDs": True, "podLabels": inputs.pod_identity_labels})
        self.release("gpu-operator", {
            "driver": {"enabled": env.cloud != "gcp"},  # GKE installs the driver on its GPU nodes itself
            "dcgmExporter": {"enabled": True, "serviceMonitor": {"enabled": True}},
            "daemonsets": {"tolerations": [{"key": GPU_TAINT_KEY, "operator": "Exists", "effect": "NoSchedule"},
                                           *inputs.gpu_tolerations]},
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
        self.release("raw", {"resources": [*secrets, create_mlflow_db,
                                           *[obj for name in ("default-deny", "models", "mlflow", "dagster")
                                             for obj in _deploy_manifests(f"network/{name}.yaml")],
                                           *_deploy_manifests("availability/pdbs.yaml"),
                                           *_deploy_manifests("rbac/dagster-models.yaml"),
                                           *admission_policies(inputs.registry, enforce=env.stage == "prod")]},
                     name="platform-manifests", after=["external-secrets"])

        if env.ui_access:  # off by default: the UIs are port-forwarded
            self.release("ui-access", {"resources": ui_access_objects(env.ui_access, env.name)}, chart="raw",
                         name="platform-ui-access", after=["gateway", "cert-manager", "raw"])

        _, dagster_sa = SERVICE_ACCOUNTS["dagster"]
        run_env = run_environment(env, inputs)
        self.release("dagster", {
            "global": {"serviceAccountName": dagster_sa},
            "serviceAccount": {"create": False, "name": dagster_sa},
            "postgresql": {"enabled": False, "postgresqlHost": inputs.database_host,
                           "postgresqlUsername": DATABASE_ADMIN, "postgresqlDatabase": "dagster"},
            "generatePostgresqlPasswordSecret": False,
            # The launcher's labels reach the run's pod and every step pod (the k8s executor inherits them).
            "runLauncher": {"type": "K8sRunLauncher", "config": {"k8sRunLauncher": {
                "envVars": [f"{k}={v}" for k, v in sorted(run_env.items())], "labels": inputs.pod_identity_labels}}},
            "dagsterDaemon": {"runCoordinator": {"enabled": True, "type": "QueuedRunCoordinator"}},
            "dagster-user-deployments": {"enabled": True, "deployments": [{
                "name": "mlops-platform", "port": 3030,
                "image": {"repository": f"{inputs.registry}/mlops-dagster", "tag": env.image_tag,
                          "pullPolicy": "IfNotPresent"},
                "dagsterApiGrpcArgs": ["-m", "mlops_platform.definitions"],
                "env": [{"name": k, "value": v} for k, v in sorted(run_env.items())],
                "labels": inputs.pod_identity_labels,
            }]},
            # The chart writes the instance's storage, launcher and coordinator from its own keys; what it has no key
            # for (run and pool concurrency) goes in verbatim from deploy/dagster/instance.yaml.
            "additionalInstanceConfig": {"concurrency": _deploy_manifests("dagster/instance.yaml")[0]["concurrency"]},
        }, after=["raw"])
        _, mlflow_sa = SERVICE_ACCOUNTS["mlflow"]
        # The server from the platform's own image, at the clients' MLflow version (the chart's default image lags);
        # its schema migration runs from the same image before each start, so a version bump upgrades the database.
        mlflow_image = {"repository": f"{inputs.registry}/mlops-mlflow", "tag": env.image_tag}
        self.release("mlflow", {
            "image": mlflow_image,
            "initImages": {"mlflowDbMigration": mlflow_image},
            "serviceAccount": {"create": False, "name": mlflow_sa},
            "extraPodLabels": inputs.pod_identity_labels,
            # The driver by name: SQLAlchemy 2.1 reads a bare `postgresql://` as psycopg 3, which the image has not.
            "backendStore": {"postgres": {"enabled": True, "host": inputs.database_host, "port": 5432,
                                          "database": "mlflow", "user": DATABASE_ADMIN, "driver": "psycopg2"},
                             "databaseMigration": True,
                             "existingDatabaseSecret": {"name": "mlflow-db", "usernameKey": "username",
                                                        "passwordKey": "password"}},
            # MLflow's server answers only Host headers it allows (localhost and private IPs by default): the
            # in-cluster name the clients use must be listed, or every call from a run or a predictor gets a 403.
            "extraArgs": {"allowedHosts": ",".join(
                (*MLFLOW_ALLOWED_HOSTS, *([env.ui_access.host("mlflow")] if env.ui_access else [])))},
            # Not proxied: clients read and write the bucket themselves, with their own workload identity, and the
            # server hands them the bucket URI (proxied storage would keep the artifacts inside the server's pod).
            "artifactRoot": {"defaultArtifactRoot": inputs.mlflow_artifact_root or storage_uris(inputs.object_root)["mlflow"],
                             "proxiedArtifactStorage": False},
        }, after=["raw"])
        for extra in inputs.extra_releases:
            self.release(extra.key, extra.values, chart=extra.chart, name=extra.name, after=list(extra.after))

    def release(self, key: str, values: dict, *, after: list[str] = (), name: str | None = None,
                chart: str | None = None) -> Release:
        """The chart `CHARTS[chart or key]` as release `name or key`; `key` names it for `after`."""
        chart = CHARTS[chart or key]
        release = Release(
            self, f"release-{key}", provider=self.helm,
            name=name or key, repository=chart.repository, chart=chart.chart, version=chart.version,
            namespace=chart.namespace, create_namespace=True, values=[_yaml({**values, **self.inputs.chart_values.get(key, {})})],
            timeout=900, depends_on=[self.releases[a] for a in after] or None,
        )
        self.releases[key] = release
        return release


# Namespaces whose pods need the host, and the baseline Pod Security policies they are excluded from.
HOST_NAMESPACES = ("gpu-operator", "monitoring")
HOST_POLICIES = ("disallow-privileged-containers", "disallow-host-path", "disallow-host-namespaces",
                 "disallow-host-ports", "disallow-capabilities")
# Where everything the platform keeps lives in its one bucket; the profile reads each as MLOPS_<NAME>_URI.
STORAGE_FOLDERS = {"landing": "landing", "quarantine": "quarantine", "capture": "capture", "io": "dagster-io",
                   "mlflow": "mlflow"}
MODELS_NAMESPACE, SERVING_ACCOUNT = SERVICE_ACCOUNTS["kserve"]
PROMETHEUS_IN_CLUSTER = "http://kube-prometheus-stack-prometheus.monitoring.svc.cluster.local:9090"
# Dagster's and MLflow's UIs have no login of their own: users reach them by `kubectl port-forward`, or through an
# OIDC login where UI access is configured (mlops_infra/ui_access.py).
MLFLOW_UI_FORWARDED = "http://127.0.0.1:5000"
# The Host headers MLflow's server accepts: its in-cluster names (with and without the port the clients dial) and the
# port-forwarded UI.
_MLFLOW_HOSTS = (urlsplit(MLFLOW_IN_CLUSTER).hostname, urlsplit(MLFLOW_IN_CLUSTER).hostname.removesuffix(".cluster.local"))
MLFLOW_ALLOWED_HOSTS = (*_MLFLOW_HOSTS, *[f"{host}:*" for host in _MLFLOW_HOSTS], "localhost:*", "127.0.0.1:*")
# The Gateway's Envoy service, its name fixed by the EnvoyProxy in deploy/gateway/ (Envoy Gateway would hash it).
SERVING_GATEWAY_IN_CLUSTER = "http://kserve-gateway.envoy-gateway-system.svc.cluster.local"


def storage_uris(object_root: str) -> dict[str, str]:
    return {name: f"{object_root}/{folder}" for name, folder in STORAGE_FOLDERS.items()}


def storage_outputs(env: Environment, inputs: PlatformInputs) -> dict[str, str]:
    """The run environment's storage URIs, as the output contract names them (`mlops_landing_uri`, ...)."""
    return {name.lower(): value for name, value in run_environment(env, inputs).items()
            if name.endswith("_URI") and name.startswith("MLOPS_")}


def run_environment(env: Environment, inputs: PlatformInputs) -> dict[str, str]:
    """The environment of every Dagster run and code server: what the cloud profile reads (`VARIABLES` in
    `mlops_platform/defs/profiles.py`; a test holds the two to each other)."""
    uris = storage_uris(inputs.object_root)
    return {
        "MLOPS_PROFILE": env.cloud,
        "MLFLOW_TRACKING_URI": MLFLOW_IN_CLUSTER,
        "MLOPS_MLFLOW_UI_URL": f"https://{env.ui_access.host('mlflow')}" if env.ui_access else MLFLOW_UI_FORWARDED,
        **{f"MLOPS_{prefix.upper()}_URI": uris[prefix] for prefix in ("landing", "quarantine", "capture", "io")},
        "MLOPS_KSERVE_NAMESPACE": MODELS_NAMESPACE,
        "MLOPS_KSERVE_SERVICE_ACCOUNT": SERVING_ACCOUNT,
        "MLOPS_SERVING_IMAGE": f"{inputs.registry}/mlops-serving:{env.image_tag}",
        "MLOPS_SERVING_BASE_URL": SERVING_GATEWAY_IN_CLUSTER,
        "MLOPS_PROMETHEUS_URL": PROMETHEUS_IN_CLUSTER,
        **inputs.sdk_env,
    }


def _deploy_manifests(relative: str) -> list[dict]:
    """Kubernetes objects kept as YAML in the repository's deploy/ folder."""
    import yaml

    return [doc for doc in yaml.safe_load_all((DEPLOY_DIR / relative).read_text()) if doc]


def _external_secret(namespace: str, name: str, remote_key: str, secret_key: str) -> dict:
    """The database password from the cloud's secret store, beside the user name (MLflow's chart reads both keys)."""
    return {
        "apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": "ClusterSecretStore", "name": "cloud-secrets"},
                 "target": {"name": name, "template": {"engineVersion": "v2", "data": {
                     secret_key: "{{ ." + secret_key.replace("-", "_") + " }}", "username": DATABASE_ADMIN}}},
                 "data": [{"secretKey": secret_key.replace("-", "_"), "remoteRef": {"key": remote_key}}]},
    }
