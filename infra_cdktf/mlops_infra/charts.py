"""Every Helm chart the platform layer installs, with its pinned version: the one place to bump a version."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Chart:
    repository: str
    chart: str
    version: str
    namespace: str


CHARTS: dict[str, Chart] = {
    "cert-manager": Chart("https://charts.jetstack.io", "cert-manager", "v1.17.2", "cert-manager"),
    # Envoy Gateway ships the Gateway API CRDs with its chart: KServe's Standard-mode canary routes through HTTPRoute.
    "envoy-gateway": Chart("oci://docker.io/envoyproxy", "gateway-helm", "v1.4.1", "envoy-gateway-system"),
    "kserve-crd": Chart("oci://ghcr.io/kserve/charts", "kserve-crd", "v0.21.0", "kserve"),
    "kserve": Chart("oci://ghcr.io/kserve/charts", "kserve", "v0.21.0", "kserve"),
    "argo-workflows": Chart("https://argoproj.github.io/argo-helm", "argo-workflows", "0.45.15", "argo"),
    "argo-cd": Chart("https://argoproj.github.io/argo-helm", "argo-cd", "8.0.17", "argocd"),
    "kube-prometheus-stack": Chart("https://prometheus-community.github.io/helm-charts", "kube-prometheus-stack",
                                   "72.9.1", "monitoring"),
    "kyverno": Chart("https://kyverno.github.io/kyverno", "kyverno", "3.4.2", "kyverno"),
    "kyverno-policies": Chart("https://kyverno.github.io/kyverno", "kyverno-policies", "3.4.2", "kyverno"),
    "external-secrets": Chart("https://charts.external-secrets.io", "external-secrets", "0.17.0", "external-secrets"),
    "gpu-operator": Chart("https://helm.ngc.nvidia.com/nvidia", "gpu-operator", "v25.3.0", "gpu-operator"),
    "karpenter": Chart("oci://public.ecr.aws/karpenter", "karpenter", "1.5.0", "karpenter"),
    "keda": Chart("https://kedacore.github.io/charts", "keda", "2.17.1", "keda"),
    "dagster": Chart("https://dagster-io.github.io/helm", "dagster", "1.13.27", "dagster"),
    "mlflow": Chart("https://community-charts.github.io/helm-charts", "mlflow", "1.3.0", "mlflow"),
    # Plain manifests (secret stores, node pools, gateways) through Helm, so a plan never needs their CRDs yet.
    "raw": Chart("https://bedag.github.io/helm-charts", "raw", "2.0.0", "kube-system"),
}
