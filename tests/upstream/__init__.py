"""Upstream schemas, kept byte for byte as their projects publish them (gzip-compressed), never edited here.

Each file names its project and version; SOURCES says where it was taken from. Tests validate the objects the
platform generates against these, with the API server's strict field validation (`kubectl --validate=strict`):
a field the schema does not know is an error, not silently pruned.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

KSERVE = "https://github.com/kserve/kserve/blob/v0.20.0/charts"  # tag v0.20.0, commit 1fb781055dd1
ENVOY_GATEWAY = "https://github.com/envoyproxy/gateway/blob/v1.9.0/charts/gateway-helm"  # commit 39763b1c07ec
KUBE_PROMETHEUS_STACK = ("https://github.com/prometheus-community/helm-charts/blob/kube-prometheus-stack-88.5.3/charts/"
                         "kube-prometheus-stack")  # commit ea930baeebeb
MLFLOW_CHART = "https://github.com/community-charts/helm-charts/blob/mlflow-1.11.5/charts/mlflow"  # commit 9d23d003453a
# The chart's crds/ are links to pkg/apis/crds; its Chart.yaml at the tag still says 1.13.0 (the release sets the
# version when it publishes), so only the CRDs and values.yaml are kept.
KARPENTER = "https://github.com/aws/karpenter-provider-aws/blob/v1.14.1"  # commit bde00654cd31
EXTERNAL_SECRETS = "https://github.com/external-secrets/external-secrets/blob/helm-chart-2.9.0"  # commit cc5bfbc2234a
CERT_MANAGER = "https://github.com/cert-manager/cert-manager/blob/v1.21.1"  # commit 24e33194fb39
KYVERNO = "https://github.com/kyverno/kyverno/blob/v1.19.0/charts"  # commit ee97ce09538b; charts 3.9.0
GPU_OPERATOR = "https://github.com/NVIDIA/gpu-operator/blob/v26.7.0/deployments/gpu-operator"  # commit 10ee5b3638b8
RAW = "https://github.com/bedag/helm-charts/blob/raw-2.0.0/charts/raw"  # commit d6ff461383b6
# cert-manager's and the GPU operator's Chart.yaml at their tags carry placeholder versions (set when published):
# only their values are kept.

SOURCES = {
    "kserve-v0.20.0-serving.kserve.io_inferenceservices.yaml.gz":
        f"{KSERVE}/kserve-crd/templates/serving.kserve.io_inferenceservices.yaml",
    "kserve-resources-v0.20.0-values.yaml.gz": f"{KSERVE}/kserve-resources/values.yaml",
    "kserve-resources-v0.20.0-Chart.yaml.gz": f"{KSERVE}/kserve-resources/Chart.yaml",
    "envoy-gateway-v1.9.0-gatewayapi-crds.yaml.gz": f"{ENVOY_GATEWAY}/charts/crds/crds/gatewayapi-crds.yaml",
    **{f"envoy-gateway-v1.9.0-gateway.envoyproxy.io_{crd}.yaml.gz":
       f"{ENVOY_GATEWAY}/charts/crds/crds/generated/gateway.envoyproxy.io_{crd}.yaml"
       for crd in ("envoyproxies", "securitypolicies")},
    # The chart's templates/crd-cert-manager.io_certificates.yaml is this file inside Helm conditionals.
    "cert-manager-v1.21.1-cert-manager.io_certificates.yaml.gz": f"{CERT_MANAGER}/deploy/crds/cert-manager.io_certificates.yaml",
    **{f"cert-manager-v1.21.1-{name}.gz": f"{CERT_MANAGER}/deploy/charts/cert-manager/{name}"
       for name in ("values.yaml", "values.schema.json")},
    **{f"{chart}-3.9.0-{name}.gz": f"{KYVERNO}/{chart}/{name}"
       for chart in ("kyverno", "kyverno-policies") for name in ("values.yaml", "Chart.yaml")},
    # The baseline policies the platform exempts the GPU operator and node-exporter from.
    **{f"kyverno-policies-3.9.0-baseline-{policy}.cel.yaml.gz": f"{KYVERNO}/kyverno-policies/templates/baseline/{policy}.cel.yaml"
       for policy in ("disallow-privileged-containers", "disallow-host-path", "disallow-host-namespaces",
                      "disallow-host-ports", "disallow-capabilities")},
    "gpu-operator-v26.7.0-values.yaml.gz": f"{GPU_OPERATOR}/values.yaml",
    # The chart that applies our own manifests: it renders each of `resources` as given, namespace and all.
    **{f"raw-2.0.0-{Path(name).name}.gz": f"{RAW}/{name}" for name in ("values.yaml", "Chart.yaml", "templates/resources.yaml")},
    **{f"kube-prometheus-stack-88.5.3-crd-{kind}.yaml.gz": f"{KUBE_PROMETHEUS_STACK}/charts/crds/crds/crd-{kind}.yaml"
       for kind in ("podmonitors", "servicemonitors", "prometheusrules")},
    "kube-prometheus-stack-88.5.3-values.yaml.gz": f"{KUBE_PROMETHEUS_STACK}/values.yaml",
    "kube-prometheus-stack-88.5.3-Chart.yaml.gz": f"{KUBE_PROMETHEUS_STACK}/Chart.yaml",
    "mlflow-chart-1.11.5-values.yaml.gz": f"{MLFLOW_CHART}/values.yaml",
    "mlflow-chart-1.11.5-values.schema.json.gz": f"{MLFLOW_CHART}/values.schema.json",
    "mlflow-chart-1.11.5-Chart.yaml.gz": f"{MLFLOW_CHART}/Chart.yaml",
    "mlflow-chart-1.11.5-_helpers.tpl.gz": f"{MLFLOW_CHART}/templates/_helpers.tpl",
    **{f"karpenter-1.14.1-{crd}.yaml.gz": f"{KARPENTER}/pkg/apis/crds/{crd}.yaml"
       for crd in ("karpenter.sh_nodepools", "karpenter.k8s.aws_ec2nodeclasses")},
    "karpenter-1.14.1-values.yaml.gz": f"{KARPENTER}/charts/karpenter/values.yaml",
    **{f"external-secrets-2.9.0-{crd}.yaml.gz": f"{EXTERNAL_SECRETS}/config/crds/bases/{crd}.yaml"
       for crd in ("external-secrets.io_externalsecrets", "external-secrets.io_clustersecretstores")},
    **{f"external-secrets-2.9.0-{name}.gz": f"{EXTERNAL_SECRETS}/deploy/charts/external-secrets/{name}"
       for name in ("values.yaml", "values.schema.json", "Chart.yaml")},
}


def read_text(name: str) -> str:
    """A recorded file as text (a Helm template is not YAML)."""
    if name not in SOURCES:
        raise KeyError(f"{name} is not a recorded upstream file; add it to SOURCES with its URL and version")
    with gzip.open(HERE / name, "rt") as fh:
        return fh.read()


def read(name: str) -> list[Any]:
    """Every YAML (or JSON) document in the file."""
    if name not in SOURCES:
        raise KeyError(f"{name} is not a recorded upstream file; add it to SOURCES with its URL and version")
    with gzip.open(HERE / name, "rt") as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def strict(schema: Any) -> Any:
    """An OpenAPI v3 schema as the API server applies it with strict field validation: objects that list their
    properties accept no others, unless the schema preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd(name: str, kind: str | None = None) -> dict:
    """The CustomResourceDefinition in the file (of `kind`, where the file holds several)."""
    [found] = [d for d in read(name) if d.get("kind") == "CustomResourceDefinition"
               and (kind is None or d["spec"]["names"]["kind"] == kind)]
    return found


@cache
def raw_crd_schema(name: str, version: str, kind: str | None = None) -> dict:
    """The OpenAPI schema of one served version of the CRD, as published (defaults and CEL rules included)."""
    [served] = [v for v in crd(name, kind)["spec"]["versions"] if v["name"] == version]
    return served["schema"]["openAPIV3Schema"]


@cache
def crd_schema(name: str, version: str, kind: str | None = None) -> dict:
    """The strict JSON schema of one served version of the CRD."""
    return strict(raw_crd_schema(name, version, kind))


@cache
def crd_validator(name: str, version: str, kind: str | None = None):
    """A validator for `crd_schema`, built once: checking a CRD's schema itself takes seconds."""
    import jsonschema

    return jsonschema.Draft202012Validator(crd_schema(name, version, kind))


# apiVersion and kind → (file, version) of the CRD the pinned chart installs.
CRDS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): "kserve-v0.20.0-serving.kserve.io_inferenceservices.yaml.gz",
    **{("gateway.networking.k8s.io/v1", kind): "envoy-gateway-v1.9.0-gatewayapi-crds.yaml.gz"
       for kind in ("GatewayClass", "Gateway", "HTTPRoute")},
    ("gateway.envoyproxy.io/v1alpha1", "EnvoyProxy"): "envoy-gateway-v1.9.0-gateway.envoyproxy.io_envoyproxies.yaml.gz",
    ("gateway.envoyproxy.io/v1alpha1", "SecurityPolicy"):
        "envoy-gateway-v1.9.0-gateway.envoyproxy.io_securitypolicies.yaml.gz",
    ("cert-manager.io/v1", "Certificate"): "cert-manager-v1.21.1-cert-manager.io_certificates.yaml.gz",
    ("monitoring.coreos.com/v1", "PodMonitor"): "kube-prometheus-stack-88.5.3-crd-podmonitors.yaml.gz",
    ("monitoring.coreos.com/v1", "ServiceMonitor"): "kube-prometheus-stack-88.5.3-crd-servicemonitors.yaml.gz",
    ("monitoring.coreos.com/v1", "PrometheusRule"): "kube-prometheus-stack-88.5.3-crd-prometheusrules.yaml.gz",
    ("karpenter.sh/v1", "NodePool"): "karpenter-1.14.1-karpenter.sh_nodepools.yaml.gz",
    ("karpenter.k8s.aws/v1", "EC2NodeClass"): "karpenter-1.14.1-karpenter.k8s.aws_ec2nodeclasses.yaml.gz",
    ("external-secrets.io/v1", "ExternalSecret"): "external-secrets-2.9.0-external-secrets.io_externalsecrets.yaml.gz",
    ("external-secrets.io/v1", "ClusterSecretStore"):
        "external-secrets-2.9.0-external-secrets.io_clustersecretstores.yaml.gz",
}


# Release key in infra_cdktf's CHARTS → the prefix of its chart's upstream files here (`-Chart.yaml.gz`, `-values...`).
CHART_FILES = {"kserve": "kserve-resources-v0.20.0", "mlflow": "mlflow-chart-1.11.5",
               "kube-prometheus-stack": "kube-prometheus-stack-88.5.3", "karpenter": "karpenter-1.14.1",
               "external-secrets": "external-secrets-2.9.0", "cert-manager": "cert-manager-v1.21.1",
               "kyverno": "kyverno-3.9.0", "kyverno-policies": "kyverno-policies-3.9.0",
               "gpu-operator": "gpu-operator-v26.7.0", "raw": "raw-2.0.0"}


class RuleViolation(ValueError):
    """A CRD's `x-kubernetes-validations` rule that the object breaks, or that could not be evaluated."""


def namespaced(obj: dict) -> bool:
    """Whether the object's kind lives in a namespace: a custom kind's CRD says so (`spec.scope`); of the built-in
    kinds the platform creates, the admission policies and their bindings are cluster-wide."""
    key = (obj["apiVersion"], obj["kind"])
    if key in CRDS:
        return crd(CRDS[key], obj["kind"])["spec"]["scope"] == "Namespaced"
    return obj["kind"] not in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding", "ClusterRole",
                               "ClusterRoleBinding", "Namespace", "StorageClass", "PriorityClass")


def validate_custom_resource(obj: dict) -> None:
    """Validate one object against its upstream CRD as the API server does: the structural schema (strict; a
    jsonschema.ValidationError), then each of the CRD's CEL rules (a RuleViolation)."""
    key = (obj["apiVersion"], obj["kind"])
    if key not in CRDS:
        raise KeyError(f"no upstream CRD recorded for {key}")
    crd_validator(CRDS[key], obj["apiVersion"].rsplit("/", 1)[1], obj["kind"]).validate(obj)
    broken = [f"{path}: {rule} -> {verdict}" for path, rule, verdict in cel_rule_results(obj) if verdict is not True]
    if broken:
        raise RuleViolation(f"{obj['kind']} {obj['metadata'].get('name')}: " + "; ".join(broken))


def validate_object(obj: dict) -> None:
    """A custom resource against its upstream CRD and rules; a built-in kind against Kubernetes 1.33's own schema,
    strictly."""
    if (obj["apiVersion"], obj["kind"]) in CRDS:
        validate_custom_resource(obj)
    else:
        import kubernetes_validate

        kubernetes_validate.validate(obj, "1.33", strict=True)


def chart_values_problems(defaults: dict, values: dict, path: str = "") -> list[str]:
    """Keys we set that the chart's own values.yaml does not have: Helm drops those silently. An empty map in the
    chart's defaults (e.g. `podAnnotations: {}`) takes any keys; so does anything below a list or a scalar."""
    problems = []
    for key, value in values.items():
        here = f"{path}.{key}" if path else key
        if key not in defaults:
            problems.append(f"{here} is not a key of the chart")
        elif isinstance(value, dict) and isinstance(defaults[key], dict) and defaults[key]:
            problems += chart_values_problems(defaults[key], value, here)
    return problems


def with_defaults(value: Any, schema: dict) -> Any:
    """The object as the API server stores it: each absent property that declares a `default` gets it, top down,
    before validation (so the CRD's rules see what they will see in the cluster)."""
    if isinstance(value, dict):
        props = schema.get("properties")
        if props is not None:
            out = {k: with_defaults(v, props[k]) if k in props else v for k, v in value.items()}
            for key, sub in props.items():
                if key not in out and "default" in sub:
                    out[key] = with_defaults(sub["default"], sub)
            return out
        extra = schema.get("additionalProperties")
        if isinstance(extra, dict):
            return {k: with_defaults(v, extra) for k, v in value.items()}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [with_defaults(v, schema["items"]) for v in value]
    return value


def _kubernetes_cel_functions() -> dict:
    """The Kubernetes CEL libraries beyond standard CEL that upstream rules use, as the API server defines them: regex
    (`find`, `findAll`) and extended strings (`split`, `join`, `lowerAscii`, `upperAscii`, `replace`, `indexOf`,
    `lastIndexOf`, `trim`, `substring`). https://kubernetes.io/docs/reference/using-api/cel/"""
    import re

    from celpy import celtypes

    def strings(values) -> celtypes.ListType:
        return celtypes.ListType([celtypes.StringType(v) for v in values])

    def split(s, sep, n=-1):
        n = int(n)
        return strings([] if n == 0 else s.split(sep) if n < 0 else s.split(sep, n - 1))

    def find_all(s, rx, n=-1):
        found = [m.group(0) for m in re.finditer(rx, s)]
        return strings(found if int(n) < 0 else found[:int(n)])

    def replace(s, old, new, n=-1):
        return celtypes.StringType(s.replace(old, new, int(n)))

    return {
        "find": lambda s, rx: celtypes.StringType(m.group(0) if (m := re.search(rx, s)) else ""),
        "findAll": find_all, "split": split, "replace": replace,
        "join": lambda items, sep="": celtypes.StringType(sep.join(items)),
        "lowerAscii": lambda s: celtypes.StringType(s.lower()), "upperAscii": lambda s: celtypes.StringType(s.upper()),
        "indexOf": lambda s, sub, start=0: celtypes.IntType(s.find(sub, int(start))),
        "lastIndexOf": lambda s, sub: celtypes.IntType(s.rfind(sub)),
        "trim": lambda s: celtypes.StringType(s.strip()),
        "substring": lambda s, start, end=None: celtypes.StringType(s[int(start):None if end is None else int(end)]),
    }


def cel_evaluate(expression: str, activation: dict) -> Any:
    """One CEL expression with Kubernetes' libraries, over JSON values (`self`, `object`, ...)."""
    import celpy

    env = celpy.Environment()
    program = env.program(env.compile(expression), functions=_kubernetes_cel_functions())
    return program.evaluate({name: celpy.json_to_cel(value) for name, value in activation.items()})


def cel_rule_results(obj: dict) -> list[tuple[str, str, bool | str]]:
    """Every `x-kubernetes-validations` rule of the object's upstream CRD that applies to it, evaluated with
    cel-python where the API server would evaluate it (on each field present, after defaulting): (path, rule,
    True | False | "error: ..."). Transition rules (`oldSelf`) need an update and are left out."""
    import celpy

    key = (obj["apiVersion"], obj["kind"])
    schema = raw_crd_schema(CRDS[key], obj["apiVersion"].rsplit("/", 1)[1], obj["kind"])
    results: list[tuple[str, str, bool | str]] = []

    def walk(value: Any, node: dict, path: str) -> None:
        for rule in node.get("x-kubernetes-validations", []):
            if "oldSelf" in rule["rule"]:
                continue
            try:
                outcome = cel_evaluate(rule["rule"], {"self": value})
                verdict: bool | str = bool(outcome) if isinstance(outcome, celpy.celtypes.BoolType) else f"error: {outcome}"
            except Exception as exc:  # a rule cel-python cannot evaluate is reported, never passed
                verdict = f"error: {type(exc).__name__}: {exc}"
            results.append((path or "/", rule["rule"], verdict))
        if isinstance(value, dict):
            props = node.get("properties")
            if props is not None:
                for k, v in value.items():
                    if k in props:
                        walk(v, props[k], f"{path}/{k}")
            elif isinstance(node.get("additionalProperties"), dict):
                for k, v in value.items():
                    walk(v, node["additionalProperties"], f"{path}/{k}")
        elif isinstance(value, list) and isinstance(node.get("items"), dict):
            for i, v in enumerate(value):
                walk(v, node["items"], f"{path}/{i}")

    walk(with_defaults(obj, schema), schema, "")
    return results
