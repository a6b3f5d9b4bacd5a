"""Every Helm chart the platform stack installs, with its pinned version: the one place to bump a version."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    repository: str
    chart: str
    version: str
    namespace: str
    source: str = ""  # where the pinned version is shown to exist upstream


GH = "https://github.com"
CHARTS: dict[str, Chart] = {
    "cert-manager": Chart("https://charts.jetstack.io", "cert-manager", "v1.21.1", "cert-manager",
                          f"{GH}/cert-manager/cert-manager/releases/tag/v1.21.1"),
    # Envoy Gateway ships the Gateway API CRDs (v1.6.1 in v1.9.0) with its chart: KServe's Standard-mode canary routes
    # through HTTPRoute. It creates no GatewayClass: deploy/gateway/ does.
    "envoy-gateway": Chart("oci://docker.io/envoyproxy", "gateway-helm", "v1.9.0", "envoy-gateway-system",
                           f"{GH}/envoyproxy/gateway/tree/v1.9.0/charts/gateway-helm"),
    # The controller's chart is `kserve-resources` since KServe 0.17 (kserve/kserve#5190); `kserve` no longer exists.
    # v0.20.0 is the newest release whose chart and CRDs are kept in tests/upstream (the runtime library is 0.21).
    "kserve-crd": Chart("oci://ghcr.io/kserve/charts", "kserve-crd", "v0.20.0", "kserve",
                        f"{GH}/kserve/kserve/tree/v0.20.0/charts/kserve-crd"),
    "kserve": Chart("oci://ghcr.io/kserve/charts", "kserve-resources", "v0.20.0", "kserve",
                    f"{GH}/kserve/kserve/tree/v0.20.0/charts/kserve-resources"),
    "kube-prometheus-stack": Chart("https://prometheus-community.github.io/helm-charts", "kube-prometheus-stack",
                                   "88.5.3", "monitoring",
                                   f"{GH}/prometheus-community/helm-charts/tree/kube-prometheus-stack-88.5.3"),
    # Kyverno 1.19; its policies chart installs CEL ValidatingPolicies by default (exclusions: vpolExcludeByPolicy).
    "kyverno": Chart("https://kyverno.github.io/kyverno", "kyverno", "3.9.0", "kyverno",
                     f"{GH}/kyverno/kyverno/tree/v1.19.0/charts/kyverno"),
    "kyverno-policies": Chart("https://kyverno.github.io/kyverno", "kyverno-policies", "3.9.0", "kyverno",
                              f"{GH}/kyverno/kyverno/tree/v1.19.0/charts/kyverno-policies"),
    # The `external-secrets.io/v1` API the platform's stores and secrets use; 0.17 is past support.
    "external-secrets": Chart("https://charts.external-secrets.io", "external-secrets", "2.9.0", "external-secrets",
                              f"{GH}/external-secrets/external-secrets/releases/tag/helm-chart-2.9.0"),
    "gpu-operator": Chart("https://helm.ngc.nvidia.com/nvidia", "gpu-operator", "v26.7.0", "gpu-operator",
                          f"{GH}/NVIDIA/gpu-operator/tree/v26.7.0/deployments/gpu-operator"),
    "karpenter": Chart("oci://public.ecr.aws/karpenter", "karpenter", "1.14.1", "karpenter",
                       f"{GH}/aws/karpenter-provider-aws/releases/tag/v1.14.1"),
    "dagster": Chart("https://dagster-io.github.io/helm", "dagster", "1.13.27", "dagster"),
    # Service on port 80 (the output contract's MLFLOW_IN_CLUSTER), `existingDatabaseSecret.usernameKey`.
    "mlflow": Chart("https://community-charts.github.io/helm-charts", "mlflow", "1.11.5", "mlflow",
                    f"{GH}/community-charts/helm-charts/tree/mlflow-1.11.5/charts/mlflow"),
    # Plain manifests (secret stores, node pools, gateways) through Helm, so a plan never needs their CRDs yet.
    "raw": Chart("https://bedag.github.io/helm-charts", "raw", "2.0.0", "kube-system",
                 f"{GH}/bedag/helm-charts/tree/raw-2.0.0/charts/raw"),
}
