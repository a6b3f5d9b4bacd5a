"""What the platform deploys, checked against the upstream truth of the versions it pins (tests/upstream/), not
against our own beliefs: CRD schemas with strict field validation, the charts' own values and names, the services
the output contract points at, the RBAC the runs need, pod sizes against the node pools, and the alert rules."""

from __future__ import annotations

import shutil
import subprocess

import jsonschema
import pytest
import yaml

from mlops_infra.charts import CHARTS
from mlops_infra.platform import MLFLOW_IN_CLUSTER, PROMETHEUS_IN_CLUSTER, SERVING_GATEWAY_IN_CLUSTER
from tests import upstream
from tests.infra.conftest import releases, values
from tests.support import REPO

DEPLOY = REPO / "deploy"


def deploy_objects() -> list[dict]:
    return [doc for path in sorted(DEPLOY.rglob("*.yaml")) if "dagster" not in path.parts and "test" not in path.name
            for doc in yaml.safe_load_all(path.read_text()) if doc and "kind" in doc]


def test_every_kubernetes_object_in_deploy_is_valid_against_its_upstream_schema():
    """Custom resources against the CRDs the pinned charts install; built-in kinds against Kubernetes 1.33's own
    schema. Strict: a misspelt field is an error here, where the API server would drop it without a word."""
    objects = deploy_objects()
    kinds = {(o["apiVersion"], o["kind"]) for o in objects}
    assert {("gateway.networking.k8s.io/v1", "Gateway"), ("monitoring.coreos.com/v1", "PodMonitor"),
            ("monitoring.coreos.com/v1", "PrometheusRule"), ("rbac.authorization.k8s.io/v1", "Role")} <= kinds
    for obj in objects:
        upstream.validate_object(obj)


RAW_RELEASES = ("platform-manifests", "platform-gateway", "platform-monitoring", "karpenter-node-pools")


@pytest.mark.parametrize("stack_id", ["aws-dev", "aws-prod", "azure-dev", "azure-prod", "gcp-dev", "gcp-prod"])
def test_every_object_the_stacks_apply_is_valid_against_its_upstream_schema(synthesized, stack_id):
    """What the `raw` chart applies, as synthesized: secret stores and external secrets (External Secrets 2.9.0's
    CRDs), Karpenter's NodePools and EC2NodeClass (1.14.1's), the gateway and monitoring objects, and built-in kinds
    (network policies, PDBs, RBAC, admission policies, the database job, dashboards) against Kubernetes 1.33."""
    installed = releases(synthesized[stack_id])
    objects = [obj for name in RAW_RELEASES if name in installed for obj in values(installed[name])["resources"]]
    kinds = {obj["kind"] for obj in objects}
    assert {"ClusterSecretStore", "ExternalSecret", "NetworkPolicy", "ValidatingAdmissionPolicy"} <= kinds
    assert ({"NodePool", "EC2NodeClass"} <= kinds) is stack_id.startswith("aws")
    for obj in objects:
        upstream.validate_object(obj)


def test_every_namespaced_object_the_raw_chart_applies_names_its_namespace(synthesized):
    """bedag's raw chart (2.0.0) renders each of `resources` as given: a namespaced object without a namespace lands
    in the release's namespace (kube-system), where no policy, route or workload of ours would find it. Scope comes
    from each custom kind's upstream CRD."""
    template = upstream.read_text("raw-2.0.0-resources.yaml.gz")
    assert "range $.Values.resources" in template and "namespace" not in template
    for stack_id, doc in synthesized.items():
        installed = releases(doc)
        for name in RAW_RELEASES:
            for obj in values(installed[name])["resources"] if name in installed else []:
                assert bool(obj["metadata"].get("namespace")) is upstream.namespaced(obj), (stack_id, name, obj["kind"],
                                                                                          obj["metadata"]["name"])


def test_the_strict_schemas_refuse_a_misspelt_field():
    [gateway] = [o for o in deploy_objects() if o["kind"] == "Gateway"]
    gateway["spec"]["listeners"][0]["allowedRoute"] = gateway["spec"]["listeners"][0].pop("allowedRoutes")
    with pytest.raises(jsonschema.ValidationError, match="allowedRoute"):
        upstream.validate_custom_resource(gateway)


def test_the_crds_own_cel_rules_refuse_what_the_api_server_refuses():
    """Schemas alone miss what CRDs say in CEL (`x-kubernetes-validations`); those rules run here with cel-python and
    Kubernetes' CEL libraries, after the schema's defaults, on every custom resource checked above. Two that a
    schema cannot see: Karpenter reserves its own label domains, and knows only some AMI families."""
    from mlops_infra.aws import karpenter_pools
    from mlops_infra.config import ENVIRONMENTS

    node_class, training, _ = karpenter_pools(ENVIRONMENTS["aws-dev"], "nodes")
    evaluated = [v for obj in (node_class, training) for _, _, v in upstream.cel_rule_results(obj)]
    assert len(evaluated) > 30 and all(v is True for v in evaluated)
    training["spec"]["template"]["metadata"]["labels"]["karpenter.sh/team"] = "ml"
    with pytest.raises(upstream.RuleViolation, match="/spec/template/metadata/labels"):
        upstream.validate_custom_resource(training)
    node_class["spec"]["amiSelectorTerms"] = [{"alias": "ubuntu@latest"}]
    with pytest.raises(upstream.RuleViolation, match="amiSelectorTerms/0/alias"):
        upstream.validate_custom_resource(node_class)


def test_charts_are_pinned_under_their_upstream_names():
    """The chart name at the pinned version, e.g. KServe's controller chart is `kserve-resources` since 0.17."""
    for key, prefix in upstream.CHART_FILES.items():
        if f"{prefix}-Chart.yaml.gz" not in upstream.SOURCES:
            continue  # Karpenter's: see tests/upstream
        [chart] = upstream.read(f"{prefix}-Chart.yaml.gz")
        assert (CHARTS[key].chart, CHARTS[key].version) == (chart["name"], chart["version"]), key
        assert CHARTS[key].source, f"{key}: say where the pinned version is shown to exist"


@pytest.mark.parametrize("key", sorted(upstream.CHART_FILES))
def test_every_value_we_set_is_a_key_of_the_pinned_chart(synthesized, key):
    """Helm drops an unknown key without a word (a `dagsterInstance.concurrency` that is not a chart key is simply
    never applied): each key we set must be in the chart's own values.yaml, and its schema where it has one."""
    prefix = upstream.CHART_FILES[key]
    [defaults] = upstream.read(f"{prefix}-values.yaml.gz")
    schema = upstream.read(f"{prefix}-values.schema.json.gz")[0] if f"{prefix}-values.schema.json.gz" in upstream.SOURCES else None
    chart = CHARTS[key]
    installed = [(stack_id, release) for stack_id, doc in synthesized.items() for release in releases(doc).values()
                 if (release["repository"], release["chart"]) == (chart.repository, chart.chart)]
    assert installed
    for stack_id, release in installed:
        ours = values(release)
        assert upstream.chart_values_problems(defaults, ours) == [], stack_id
        if schema:
            jsonschema.validate(_merge(defaults, ours), schema)


def _merge(base: dict, override: dict) -> dict:
    merged = dict(base)
    for k, v in override.items():
        merged[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return merged


def test_the_output_contract_points_at_the_services_the_charts_create(synthesized):
    """MLflow's service is the release name on the chart's service port; Prometheus's is kube-prometheus-stack's
    `<release>-prometheus` on its port; the gateway's is the name the EnvoyProxy fixes."""
    [mlflow_defaults] = upstream.read("mlflow-chart-1.11.5-values.yaml.gz")
    assert f"http://mlflow.{CHARTS['mlflow'].namespace}.svc.cluster.local:{mlflow_defaults['service']['port']}" == MLFLOW_IN_CLUSTER
    [prometheus_defaults] = upstream.read("kube-prometheus-stack-88.5.3-values.yaml.gz")
    port = prometheus_defaults["prometheus"]["service"]["port"]
    namespace = CHARTS["kube-prometheus-stack"].namespace
    assert f"http://kube-prometheus-stack-prometheus.{namespace}.svc.cluster.local:{port}" == PROMETHEUS_IN_CLUSTER
    [proxy] = [o for o in deploy_objects() if o["kind"] == "EnvoyProxy"]
    service = proxy["spec"]["provider"]["kubernetes"]["envoyService"]["name"]
    assert f"http://{service}.{proxy['metadata']['namespace']}.svc.cluster.local" == SERVING_GATEWAY_IN_CLUSTER
    for doc in synthesized.values():
        installed = releases(doc)
        assert {"mlflow", "kube-prometheus-stack"} <= set(installed)
        assert installed["mlflow"]["namespace"] == "mlflow"
        kserve = values(installed["kserve"])["kserve"]["controller"]["gateway"]["ingressGateway"]
        [gateway] = [o for o in deploy_objects() if o["kind"] == "Gateway"]
        assert kserve["kserveGateway"] == f"{gateway['metadata']['namespace']}/{gateway['metadata']['name']}"
        assert kserve["className"] == gateway["spec"]["gatewayClassName"] and kserve["createGateway"] is False


def test_the_host_access_exemptions_reach_the_policies_kyverno_installs(synthesized):
    """kyverno-policies 3.9.0 installs CEL ValidatingPolicies by default (`policyType`), which read their exclusions
    from `vpolExcludeByPolicy.<policy name>`; `policyExclude` feeds only the legacy ClusterPolicies. Each policy we
    exempt the GPU operator and node-exporter from is a baseline template of the pinned chart under that name, and
    that template turns the entry into its match conditions."""
    from mlops_infra.platform import HOST_NAMESPACES, HOST_POLICIES

    [defaults] = upstream.read("kyverno-policies-3.9.0-values.yaml.gz")
    assert defaults["policyType"] == "ValidatingPolicy"
    for policy in HOST_POLICIES:
        template = upstream.read_text(f"kyverno-policies-3.9.0-baseline-{policy}.cel.yaml.gz")
        assert f'{{{{- $name := "{policy}" }}}}' in template and "kind: ValidatingPolicy" in template
        assert 'include "kyverno-policies.policyVpolExclude" (dict "name" $name "values" .Values)' in template
        assert 'include "kyverno-policies.vpolExcludeMatchConditions"' in template
    for stack_id, doc in synthesized.items():
        ours = values(releases(doc)["kyverno-policies"])
        assert "policyType" not in ours, stack_id
        assert ours["vpolExcludeByPolicy"] == {p: {"excludeNamespaces": list(HOST_NAMESPACES)} for p in HOST_POLICIES}


def _mlflow_pod_labels() -> dict[str, str]:
    """The labels the pinned MLflow chart puts on its pods: `mlflow.selectorLabels` in its _helpers.tpl, rendered for
    our release (name `mlflow`, no nameOverride, so `mlflow.name` is the chart's name)."""
    import re

    helpers = upstream.read_text("mlflow-chart-1.11.5-_helpers.tpl.gz")
    [body] = re.findall(r'define "mlflow.selectorLabels" -}}\n(.*?)\n{{- end }}', helpers, re.S)
    [chart] = upstream.read("mlflow-chart-1.11.5-Chart.yaml.gz")
    rendered = body.replace('{{ include "mlflow.name" . }}', chart["name"]).replace("{{ .Release.Name }}", "mlflow")
    assert "{{" not in rendered, rendered
    return dict(line.split(": ", 1) for line in rendered.splitlines())


def _selects(selector: dict, labels: dict) -> bool:
    from tests.infra.test_network_policies import selects

    return selects(selector, labels)


def test_selectors_pick_the_pods_the_charts_and_kserve_label(synthesized):
    """A PodDisruptionBudget, PodMonitor or NetworkPolicy whose selector matches no pod does nothing, silently.
    MLflow's pods carry the chart's selector labels; a predictor pod carries its InferenceService's labels (KServe
    v0.20.0 unions them into the pod's metadata: buildObjectMeta in
    pkg/controller/v1beta1/inferenceservice/components/predictor.go); Dagster's webserver and daemon carry
    `component: dagster-webserver` / `dagster-daemon` (the chart's deployment templates)."""
    from kubernetes.client import ApiClient

    from mlops_platform.integrations.serving.kserve import inference_service

    isvc = ApiClient().sanitize_for_serialization(inference_service(
        "churn", "1", "2", 10, namespace="models", image="i", tracking_uri="t", storage_uris={"1": "s3://a", "2": "s3://b"}))
    pods = {"models": isvc["metadata"]["labels"], "mlflow": _mlflow_pod_labels(),
            "dagster": {"component": "dagster-webserver"}}
    objects = deploy_objects() + [o for o in values(releases(synthesized["aws-dev"])["platform-manifests"])["resources"]
                                  if o["kind"] in ("NetworkPolicy", "PodDisruptionBudget")]
    checked = 0
    for obj in objects:
        namespace = obj["metadata"].get("namespace")
        selector = (obj["spec"].get("selector") if obj["kind"] in ("PodDisruptionBudget", "PodMonitor")
                    else obj["spec"].get("podSelector") if obj["kind"] == "NetworkPolicy" else None)
        if selector in (None, {}) or namespace not in pods:
            continue
        assert _selects(selector, pods[namespace]), (obj["kind"], obj["metadata"]["name"], pods[namespace])
        checked += 1
    assert checked >= 4


def test_the_uis_without_a_login_are_never_exposed(synthesized):
    """Dagster's and MLflow's UIs have no login: port-forward only. No Service of type LoadBalancer or NodePort,
    no Ingress or route for them, anywhere in what we deploy."""
    def walk(node):
        if isinstance(node, dict):
            yield node
            for v in node.values():
                yield from walk(v)
        elif isinstance(node, list):
            for v in node:
                yield from walk(v)

    for stack_id, doc in synthesized.items():
        for release in releases(doc).values():
            try:
                tree = values(release)
            except (ValueError, TypeError):
                continue  # values built from Terraform expressions: checked where they are made
            for node in walk(tree):
                assert node.get("type") not in ("LoadBalancer", "NodePort"), (stack_id, release["name"], node)
                if "ingress" in node and isinstance(node["ingress"], dict):
                    assert not node["ingress"].get("enabled"), (stack_id, release["name"])
    assert not [o for o in deploy_objects() if o["kind"] in ("Ingress", "HTTPRoute")]


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: `make infra-tools` installs Debian's prometheus package (CI never skips this)"
    return found


def test_alert_rules_pass_their_promtool_unit_tests(tmp_path):
    """deploy/monitoring/rules.yaml is a PrometheusRule; promtool reads its groups as a rule file."""
    [rule] = yaml.safe_load_all((DEPLOY / "monitoring" / "rules.yaml").read_text())
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(DEPLOY / "monitoring" / "rules.test.yaml", tmp_path)
    check = subprocess.run([promtool(), "check", "rules", "rules.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    tested = subprocess.run([promtool(), "test", "rules", "rules.test.yaml"], cwd=tmp_path, capture_output=True, text=True)
    assert tested.returncode == 0 and "SUCCESS" in tested.stdout, tested.stdout + tested.stderr
    names = {r.get("alert") for g in rule["spec"]["groups"] for r in g["rules"]} - {None}
    cases = (DEPLOY / "monitoring" / "rules.test.yaml").read_text()
    assert [n for n in names if f"alertname: {n}" not in cases] == [], "every alert has a promtool case"
