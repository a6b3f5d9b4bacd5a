"""The platform's own admission policies, as Kubernetes ValidatingAdmissionPolicies (CEL, GA since 1.30): images
only from the platform's registry and KServe's, requests and limits on every model server container, and the
model metadata labels on every InferenceService. Enforced (Deny) in prod, audited with a warning in dev.

tests/infra/test_admission_policies.py evaluates every expression with a CEL runtime (cel-python) on objects that
must pass (what the platform itself creates) and objects that must fail."""

from __future__ import annotations

MODELS_NAMESPACE = "models"
# KServe's own images in the predictor pods (the storage initializer, the agent) come from its Docker Hub org.
KSERVE_IMAGES = "docker.io/kserve/"
MODEL_LABELS = ("app.kubernetes.io/part-of", "mlops.platform/model")


def _cel_list(values: list[str]) -> str:
    return "[" + ", ".join(f"'{v}'" for v in values) + "]"


def allowed_images_expression(registries: list[str]) -> str:
    prefixes = _cel_list([r.rstrip("/") + "/" for r in registries])
    return ("object.spec.containers.all(c, " + prefixes + ".exists(p, c.image.startsWith(p))) && "
            "(!has(object.spec.initContainers) || object.spec.initContainers.all(c, "
            + prefixes + ".exists(p, c.image.startsWith(p))))")


REQUESTS_AND_LIMITS = ("object.spec.containers.all(c, has(c.resources) && has(c.resources.requests) && "
                       "'cpu' in c.resources.requests && 'memory' in c.resources.requests && "
                       "has(c.resources.limits) && 'memory' in c.resources.limits)")
MODEL_METADATA = ("has(object.metadata.labels) && "
                  + " && ".join(f"'{label}' in object.metadata.labels" for label in MODEL_LABELS)
                  + " && object.metadata.labels['app.kubernetes.io/part-of'] == 'mlops-platform'")


def admission_policies(registry: str, enforce: bool) -> list[dict]:
    """The policies and their bindings, for the environment's registry."""
    pods = {"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE", "UPDATE"], "resources": ["pods"]}
    isvcs = {"apiGroups": ["serving.kserve.io"], "apiVersions": ["v1beta1"], "operations": ["CREATE", "UPDATE"],
             "resources": ["inferenceservices"]}
    specs = {
        "mlops-allowed-images": (pods, allowed_images_expression([registry, KSERVE_IMAGES]),
                                 "model server images come from the platform's registry or KServe's"),
        "mlops-requests-and-limits": (pods, REQUESTS_AND_LIMITS,
                                      "every model server container requests CPU and memory and limits memory"),
        "mlops-model-metadata": (isvcs, MODEL_METADATA,
                                 "an InferenceService carries the labels app.kubernetes.io/part-of=mlops-platform "
                                 "and mlops.platform/model"),
    }
    objects = []
    for name, (rule, expression, message) in specs.items():
        objects.append({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
            "metadata": {"name": name},
            "spec": {"failurePolicy": "Fail", "matchConstraints": {"resourceRules": [rule]},
                     "validations": [{"expression": expression, "message": message}]},
        })
        objects.append({
            "apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name},
            "spec": {"policyName": name, "validationActions": ["Deny"] if enforce else ["Warn", "Audit"],
                     "matchResources": {"namespaceSelector": {"matchLabels": {
                         "kubernetes.io/metadata.name": MODELS_NAMESPACE}}}},
        })
    return objects
