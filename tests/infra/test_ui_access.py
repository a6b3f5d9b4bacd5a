"""Optional browser access to the UIs (mlops_infra/ui_access.py): off unless configured, and when on, every route to
Dagster's or MLflow's UI is behind Envoy Gateway's OIDC login, on a gateway of its own, with the certificate, the
redirects, MLflow's allowed Host and the network policies agreeing."""

from __future__ import annotations

import dataclasses
import json

import pytest

from mlops_infra.ui_access import GATEWAY, GATEWAY_NAMESPACE, UIS, UiAccess
from tests import upstream
from tests.infra.conftest import releases, values
from tests.infra.test_network_policies import CODE_SERVER, ENVOY, MLFLOW, POLICIES, WEBSERVER, allowed

ACCESS = UiAccess("prod.mlops.example.com", "https://login.example.com/realms/mlops", "mlops-ui", "letsencrypt")
RAW = ("platform-manifests", "platform-gateway", "platform-monitoring", "platform-ui-access")


@pytest.fixture(scope="module")
def with_ui(tmp_path_factory) -> dict:
    """aws-prod with UI access, synthesized as `cdktf synth` would: its platform stack."""
    import cdktn

    from mlops_infra.config import ENVIRONMENTS
    from mlops_infra.stacks import build

    out = tmp_path_factory.mktemp("cdktf-ui")
    app = cdktn.App(outdir=str(out))
    build(app, dataclasses.replace(ENVIRONMENTS["aws-prod"], ui_access=ACCESS))
    app.synth()
    return json.loads((out / "stacks" / "aws-prod-platform" / "cdk.tf.json").read_text())


def applied(doc: dict) -> list[dict]:
    installed = releases(doc)
    return [obj for name in RAW if name in installed for obj in values(installed[name])["resources"]]


def test_ui_access_is_all_or_nothing(monkeypatch):
    names = ("MLOPS_UI_DOMAIN", "MLOPS_UI_OIDC_ISSUER", "MLOPS_UI_OIDC_CLIENT_ID", "MLOPS_UI_CLUSTER_ISSUER")
    for name in names:
        monkeypatch.delenv(name, raising=False)
    assert UiAccess.from_environment("aws", "dev") is None
    monkeypatch.setenv("MLOPS_UI_DOMAIN", "{stage}.{cloud}.mlops.example.com")
    with pytest.raises(ValueError, match="missing MLOPS_UI_OIDC_ISSUER, MLOPS_UI_OIDC_CLIENT_ID, MLOPS_UI_CLUSTER_ISSUER"):
        UiAccess.from_environment("aws", "dev")
    for name, value in zip(names[1:], ("http://login.example.com", "mlops-ui", "letsencrypt"), strict=True):
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="https://"):
        UiAccess.from_environment("aws", "dev")
    monkeypatch.setenv("MLOPS_UI_OIDC_ISSUER", "https://login.example.com")
    assert UiAccess.from_environment("gcp", "prod").host("mlflow") == "mlflow.prod.gcp.mlops.example.com"


def test_by_default_nothing_exposes_the_uis(synthesized):
    for stack_id, doc in synthesized.items():
        assert "platform-ui-access" not in releases(doc), stack_id
        assert not [o for o in applied(doc) if o["kind"] in ("HTTPRoute", "Ingress", "SecurityPolicy")], stack_id
    assert not allowed(ENVOY, WEBSERVER, 80) and not allowed(ENVOY, MLFLOW, 5000)


def test_every_route_to_a_ui_requires_an_oidc_login(with_ui):
    """Each HTTPRoute that reaches a UI's service has an OIDC SecurityPolicy on it; the UI gateway takes routes from
    the UI namespaces only, over HTTPS; its load balancer is the only one, and the model gateway stays in-cluster."""
    objects = applied(with_ui)
    routes = [o for o in objects if o["kind"] == "HTTPRoute"]
    ui_services = {(b.namespace, b.service) for b in UIS.values()}
    to_uis = [r for r in routes if any((r["metadata"]["namespace"], ref["name"]) in ui_services
                                       for rule in r["spec"]["rules"] for ref in rule["backendRefs"])]
    assert len(to_uis) == len(UIS)
    for route in to_uis:
        [policy] = [p for p in objects if p["kind"] == "SecurityPolicy"
                    and p["metadata"]["namespace"] == route["metadata"]["namespace"]
                    and {"group": "gateway.networking.k8s.io", "kind": "HTTPRoute",
                         "name": route["metadata"]["name"]} in p["spec"]["targetRefs"]]
        assert policy["spec"]["oidc"]["provider"]["issuer"] == ACCESS.oidc_issuer
        assert [p["name"] for p in route["spec"]["parentRefs"]] == [GATEWAY]
    [gateway] = [o for o in objects if o["kind"] == "Gateway" and o["metadata"]["name"] == GATEWAY]
    [listener] = gateway["spec"]["listeners"]
    assert listener["protocol"] == "HTTPS" and listener["tls"]["mode"] == "Terminate"
    [expression] = listener["allowedRoutes"]["namespaces"]["selector"]["matchExpressions"]
    assert set(expression["values"]) == {b.namespace for b in UIS.values()}
    in_ui_namespaces = [r for r in routes if r["metadata"]["namespace"] in expression["values"]]
    assert in_ui_namespaces == to_uis, "nothing else may ride the UI gateway"
    balancers = [o for o in objects if o["kind"] == "EnvoyProxy"
                 and o["spec"]["provider"]["kubernetes"]["envoyService"]["type"] == "LoadBalancer"]
    assert [b["metadata"]["name"] for b in balancers] == [GATEWAY]


def test_the_ui_objects_are_valid_against_their_upstream_schemas(with_ui):
    """Envoy Gateway 1.9.0's SecurityPolicy, EnvoyProxy and Gateway API CRDs, cert-manager 1.21.1's Certificate and
    External Secrets 2.9.0's ExternalSecret, each with its CEL rules; network policies against Kubernetes 1.33."""
    objects = values(releases(with_ui)["platform-ui-access"])["resources"]
    for obj in objects:
        upstream.validate_object(obj)


def test_hosts_certificate_redirects_and_mlflow_agree(with_ui):
    objects = applied(with_ui)
    hosts = sorted(h for o in objects if o["kind"] == "HTTPRoute" for h in o["spec"]["hostnames"])
    [certificate] = [o for o in objects if o["kind"] == "Certificate"]
    assert sorted(certificate["spec"]["dnsNames"]) == hosts == sorted(ACCESS.host(ui) for ui in UIS)
    assert certificate["metadata"]["namespace"] == GATEWAY_NAMESPACE
    for policy in (o for o in objects if o["kind"] == "SecurityPolicy"):
        [target] = policy["spec"]["targetRefs"]
        [route] = [o for o in objects if o["kind"] == "HTTPRoute" and o["metadata"]["name"] == target["name"]]
        assert policy["spec"]["oidc"]["redirectURL"] == f"https://{route['spec']['hostnames'][0]}/oauth2/callback"
    installed = releases(with_ui)
    mlflow = values(installed["mlflow"])
    assert ACCESS.host("mlflow") in mlflow["extraArgs"]["allowedHosts"].split(",")
    run_env = dict(v.split("=", 1) for v in values(installed["dagster"])["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
    assert run_env["MLOPS_MLFLOW_UI_URL"] == f"https://{ACCESS.host('mlflow')}"


def test_the_gateway_reaches_the_ui_pods_and_nothing_else(with_ui):
    policies = POLICIES + [o for o in applied(with_ui) if o["kind"] == "NetworkPolicy"
                           and o["metadata"]["name"].endswith("-ui-from-gateway")]
    assert allowed(ENVOY, WEBSERVER, 80, policies) and allowed(ENVOY, MLFLOW, 5000, policies)
    assert not allowed(ENVOY, CODE_SERVER, 3030, policies) and not allowed(ENVOY, WEBSERVER, 3030, policies)
