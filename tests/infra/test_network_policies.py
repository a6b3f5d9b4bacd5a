"""The platform's NetworkPolicies (deploy/network/), evaluated with Kubernetes' ingress semantics on the flows the
platform needs (each must be allowed) and on flows nobody needs (each must be denied)."""

from __future__ import annotations

import pytest
import yaml

from tests.support import REPO

POLICIES = [doc for path in sorted((REPO / "deploy" / "network").glob("*.yaml"))
            for doc in yaml.safe_load_all(path.read_text()) if doc]


def selects(selector: dict, labels: dict) -> bool:
    """matchLabels and matchExpressions (In, NotIn, Exists) of a label selector; {} selects everything."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        value, op = labels.get(expr["key"]), expr["operator"]
        if (op == "In" and value not in expr["values"]) or (op == "NotIn" and value in expr["values"]) \
                or (op == "Exists" and value is None):
            return False
    return True


def peer_matches(peer: dict, policy_namespace: str, source_namespace: str, source_labels: dict) -> bool:
    namespace_labels = {"kubernetes.io/metadata.name": source_namespace}
    if "namespaceSelector" in peer:
        if not selects(peer["namespaceSelector"], namespace_labels):
            return False
    elif source_namespace != policy_namespace:  # a podSelector alone means pods of the policy's own namespace
        return False
    return selects(peer.get("podSelector") or {}, source_labels)


def allowed(source: tuple[str, dict], destination: tuple[str, dict], port: int, policies: list[dict] = POLICIES) -> bool:
    (src_ns, src_labels), (dst_ns, dst_labels) = source, destination
    selected = [p for p in policies if p["metadata"]["namespace"] == dst_ns
                and "Ingress" in p["spec"].get("policyTypes", ["Ingress"]) and selects(p["spec"]["podSelector"], dst_labels)]
    if not selected:
        return True
    for policy in selected:
        for rule in policy["spec"].get("ingress") or []:
            peers_ok = not rule.get("from") or any(peer_matches(peer, dst_ns, src_ns, src_labels) for peer in rule["from"])
            ports_ok = not rule.get("ports") or any(p.get("port") == port for p in rule["ports"])
            if peers_ok and ports_ok:
                return True
    return False


MODEL_SERVER = ("models", {"app.kubernetes.io/part-of": "mlops-platform", "mlops.platform/model": "churn"})
MLFLOW = ("mlflow", {"app.kubernetes.io/name": "mlflow"})
CODE_SERVER = ("dagster", {"component": "user-deployments"})
ENVOY = ("envoy-gateway-system", {"app.kubernetes.io/name": "envoy"})
PROMETHEUS = ("monitoring", {"app.kubernetes.io/name": "prometheus"})
RUN_POD = ("dagster", {"dagster/run-id": "r1"})
DAEMON = ("dagster", {"component": "dagster-daemon"})
WEBSERVER = ("dagster", {"component": "dagster-webserver"})
STRANGER = ("default", {"app": "anything"})


@pytest.mark.parametrize(("source", "destination", "port"), [
    (ENVOY, MODEL_SERVER, 8080), (PROMETHEUS, MODEL_SERVER, 8080), (RUN_POD, MODEL_SERVER, 8080),
    (RUN_POD, MLFLOW, 5000), (MODEL_SERVER, MLFLOW, 5000), (PROMETHEUS, MLFLOW, 5000),
    (DAEMON, CODE_SERVER, 3030), (RUN_POD, CODE_SERVER, 3030),
])
def test_the_flows_the_platform_needs_are_allowed(source, destination, port):
    assert allowed(source, destination, port)


@pytest.mark.parametrize(("source", "destination", "port"), [
    (STRANGER, MODEL_SERVER, 8080), (STRANGER, MLFLOW, 5000), (STRANGER, CODE_SERVER, 3030),
    (ENVOY, MLFLOW, 5000), (ENVOY, CODE_SERVER, 3030), (ENVOY, WEBSERVER, 80), (MODEL_SERVER, CODE_SERVER, 3030),
    (RUN_POD, MODEL_SERVER, 9000), (MODEL_SERVER, MODEL_SERVER, 8080),
])
def test_everything_else_is_denied(source, destination, port):
    assert not allowed(source, destination, port)


def test_each_platform_namespace_denies_by_default():
    defaults = {p["metadata"]["namespace"] for p in POLICIES
                if p["spec"]["podSelector"] == {} and "ingress" not in p["spec"] and p["spec"]["policyTypes"] == ["Ingress"]}
    assert defaults == {"models", "mlflow", "dagster"}
