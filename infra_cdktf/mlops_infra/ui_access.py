"""Optional browser access to Dagster's and MLflow's UIs, which have no login of their own.

Off by default: the UIs are reached with `kubectl port-forward`, and nothing exposes them. Set at synth time

    MLOPS_UI_DOMAIN='{stage}.mlops.example.com'  MLOPS_UI_OIDC_ISSUER=https://login.example.com
    MLOPS_UI_OIDC_CLIENT_ID=mlops-ui  MLOPS_UI_CLUSTER_ISSUER=letsencrypt

and each environment also gets an HTTPS Gateway of its own (`dagster.<domain>`, `mlflow.<domain>`) on a load balancer,
where every route carries Envoy Gateway's OIDC SecurityPolicy: no request reaches a UI without a login at the
identity provider. The OIDC client's secret comes from the cloud's secret store (`<env>-ui-oidc-client-secret`,
which you put there), the certificate from your cert-manager ClusterIssuer. The model endpoints' gateway stays
in-cluster.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

GATEWAY_NAMESPACE = "envoy-gateway-system"
GATEWAY = "ui-gateway"
OIDC_SECRET = "ui-oidc"  # the Secret SecurityPolicy reads `client-secret` from, synced by External Secrets


@dataclass(frozen=True)
class UiBackend:
    namespace: str
    service: str
    service_port: int
    pod_port: int  # what the network policy admits
    pod_labels: dict[str, str]


UIS = {
    "dagster": UiBackend("dagster", "dagster-dagster-webserver", 80, 80, {"component": "dagster-webserver"}),
    "mlflow": UiBackend("mlflow", "mlflow", 80, 5000, {"app.kubernetes.io/name": "mlflow"}),
}


@dataclass(frozen=True)
class UiAccess:
    domain: str
    oidc_issuer: str
    oidc_client_id: str
    cluster_issuer: str

    @classmethod
    def from_environment(cls, cloud: str, stage: str) -> UiAccess | None:
        """From the MLOPS_UI_* variables (all of them, or none: half a login is refused); `{cloud}` and `{stage}` in
        the domain give each environment its own."""
        names = ("MLOPS_UI_DOMAIN", "MLOPS_UI_OIDC_ISSUER", "MLOPS_UI_OIDC_CLIENT_ID", "MLOPS_UI_CLUSTER_ISSUER")
        given = {name: os.environ.get(name, "") for name in names}
        if not any(given.values()):
            return None
        missing = [name for name, value in given.items() if not value]
        if missing:
            raise ValueError(f"UI access needs all of {', '.join(names)}; missing {', '.join(missing)}")
        if not given["MLOPS_UI_OIDC_ISSUER"].startswith("https://"):
            raise ValueError("MLOPS_UI_OIDC_ISSUER must be an https:// URL")
        return cls(given["MLOPS_UI_DOMAIN"].format(cloud=cloud, stage=stage), given["MLOPS_UI_OIDC_ISSUER"],
                   given["MLOPS_UI_OIDC_CLIENT_ID"], given["MLOPS_UI_CLUSTER_ISSUER"])

    def host(self, ui: str) -> str:
        return f"{ui}.{self.domain}"


def ui_access_objects(access: UiAccess, env_name: str) -> list[dict]:
    """The Gateway (its own class and load balancer), certificate, and per UI: route, OIDC policy, client secret and
    the network policy that admits the gateway to the UI's pods."""
    hosts = [access.host(ui) for ui in UIS]
    objects: list[dict] = [
        {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "EnvoyProxy",
         "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
         "spec": {"provider": {"type": "Kubernetes", "kubernetes": {"envoyService": {
             "name": GATEWAY, "type": "LoadBalancer", "externalTrafficPolicy": "Local"}}}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": "envoy-ui"},
         "spec": {"controllerName": "gateway.envoyproxy.io/gatewayclass-controller",
                  "parametersRef": {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": GATEWAY,
                                    "namespace": GATEWAY_NAMESPACE}}},
        {"apiVersion": "cert-manager.io/v1", "kind": "Certificate",
         "metadata": {"name": "ui-tls", "namespace": GATEWAY_NAMESPACE},
         "spec": {"secretName": "ui-tls", "dnsNames": hosts,
                  "issuerRef": {"group": "cert-manager.io", "kind": "ClusterIssuer", "name": access.cluster_issuer}}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": "envoy-ui", "listeners": [{
             "name": "https", "protocol": "HTTPS", "port": 443, "hostname": f"*.{access.domain}",
             "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": "ui-tls"}]},
             "allowedRoutes": {"kinds": [{"kind": "HTTPRoute"}], "namespaces": {"from": "Selector", "selector": {
                 "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                       "values": sorted(b.namespace for b in UIS.values())}]}}}}]}},
    ]
    for ui, backend in UIS.items():
        host = access.host(ui)
        objects += [
            {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
             "metadata": {"name": f"{ui}-ui", "namespace": backend.namespace},
             "spec": {"parentRefs": [{"name": GATEWAY, "namespace": GATEWAY_NAMESPACE, "sectionName": "https"}],
                      "hostnames": [host],
                      "rules": [{"backendRefs": [{"name": backend.service, "port": backend.service_port}]}]}},
            {"apiVersion": "gateway.envoyproxy.io/v1alpha1", "kind": "SecurityPolicy",
             "metadata": {"name": f"{ui}-ui-login", "namespace": backend.namespace},
             "spec": {"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": f"{ui}-ui"}],
                      "oidc": {"provider": {"issuer": access.oidc_issuer}, "clientID": access.oidc_client_id,
                               "clientSecret": {"name": OIDC_SECRET},
                               "redirectURL": f"https://{host}/oauth2/callback", "logoutPath": "/logout"}}},
            {"apiVersion": "external-secrets.io/v1", "kind": "ExternalSecret",
             "metadata": {"name": OIDC_SECRET, "namespace": backend.namespace},
             "spec": {"refreshInterval": "1h", "secretStoreRef": {"kind": "ClusterSecretStore", "name": "cloud-secrets"},
                      "target": {"name": OIDC_SECRET},
                      "data": [{"secretKey": "client-secret", "remoteRef": {"key": f"{env_name}-ui-oidc-client-secret"}}]}},
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
             "metadata": {"name": f"{ui}-ui-from-gateway", "namespace": backend.namespace},
             "spec": {"podSelector": {"matchLabels": backend.pod_labels}, "policyTypes": ["Ingress"],
                      "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {
                          "kubernetes.io/metadata.name": GATEWAY_NAMESPACE}}}],
                          "ports": [{"protocol": "TCP", "port": backend.pod_port}]}]}},
        ]
    return objects
