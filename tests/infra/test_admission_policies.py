"""The platform's admission policies (mlops_infra/policies.py), each CEL expression evaluated with cel-python on what
the platform itself creates (which must pass) and on what the policy is there to refuse."""

from __future__ import annotations

import celpy
import kubernetes_validate
import pytest

from mlops_infra.policies import admission_policies
from mlops_platform.core.canary import Revision
from mlops_platform.integrations.serving.kserve import DeploymentMode, inference_service, predictor_spec
from tests import upstream

REGISTRY = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/mlops-dev"
IMAGE = f"{REGISTRY}/mlops-serving:0.1.0"


def admits(policy: str, obj: dict) -> bool:
    [spec] = [p["spec"] for p in admission_policies(REGISTRY, enforce=True)
              if p["kind"] == "ValidatingAdmissionPolicy" and p["metadata"]["name"] == policy]
    results = [upstream.cel_evaluate(v["expression"], {"object": obj}) for v in spec["validations"]]
    assert all(isinstance(r, celpy.celtypes.BoolType) for r in results), results  # an evaluation error is no verdict
    return all(bool(r) for r in results)


def model_server_pod(image: str = IMAGE, **resources) -> dict:
    """The pod KServe makes of the platform's predictor: our container, and KServe's storage initializer."""
    from kubernetes.client import ApiClient

    predictor = ApiClient().sanitize_for_serialization(
        predictor_spec("churn", "3", Revision.STABLE, image=image, tracking_uri="http://mlflow", service_account=None,
                       storage_uris={"3": "s3://bucket/mlflow/3"}))
    container = predictor["containers"][0]
    if resources:
        container["resources"] = resources
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "churn-predictor", "namespace": "models"},
            "spec": {"containers": [container], "initContainers": [
                {"name": "storage-initializer", "image": "docker.io/kserve/storage-initializer:v0.20.0",
                 "resources": {"requests": {"cpu": "100m", "memory": "100Mi"}, "limits": {"memory": "1Gi"}}}]}}


def test_the_policies_are_valid_kubernetes_objects_and_bind_to_the_models_namespace():
    for enforce, actions in ((True, ["Deny"]), (False, ["Warn", "Audit"])):
        objects = admission_policies(REGISTRY, enforce=enforce)
        for obj in objects:
            kubernetes_validate.validate(obj, "1.33", strict=True)
        bindings = [o for o in objects if o["kind"] == "ValidatingAdmissionPolicyBinding"]
        assert {b["spec"]["policyName"] for b in bindings} == {o["metadata"]["name"] for o in objects
                                                                if o["kind"] == "ValidatingAdmissionPolicy"}
        assert all(b["spec"]["validationActions"] == actions for b in bindings)


def test_the_model_servers_the_platform_creates_pass():
    pod = model_server_pod()
    assert admits("mlops-allowed-images", pod) and admits("mlops-requests-and-limits", pod)


@pytest.mark.parametrize("image", ["docker.io/library/nginx:1.27", f"{REGISTRY}-evil/mlops-serving:0.1.0",
                                   "ghcr.io/someone/model:latest"])
def test_an_image_from_elsewhere_is_refused(image):
    assert not admits("mlops-allowed-images", model_server_pod(image=image))


def test_a_side_loaded_init_container_is_refused_too():
    pod = model_server_pod()
    pod["spec"]["initContainers"].append({"name": "fetch", "image": "docker.io/library/busybox"})
    assert not admits("mlops-allowed-images", pod)


@pytest.mark.parametrize("resources", [{"requests": {"cpu": "1"}, "limits": {"memory": "1Gi"}},
                                       {"requests": {"cpu": "1", "memory": "1Gi"}},
                                       {"limits": {"memory": "1Gi"}}])
def test_a_container_without_requests_or_a_memory_limit_is_refused(resources):
    assert not admits("mlops-requests-and-limits", model_server_pod(**resources))


def test_inference_services_carry_the_model_labels():
    from kubernetes.client import ApiClient

    isvc = ApiClient().sanitize_for_serialization(inference_service(
        "churn", "3", "4", 10, namespace="models", image=IMAGE, tracking_uri="http://mlflow",
        storage_uris={"3": "s3://b/3", "4": "s3://b/4"}, mode=DeploymentMode.STANDARD))
    assert admits("mlops-model-metadata", isvc)
    del isvc["metadata"]["labels"]["mlops.platform/model"]
    assert not admits("mlops-model-metadata", isvc)
    isvc["metadata"]["labels"] = {"mlops.platform/model": "churn", "app.kubernetes.io/part-of": "someone-else"}
    assert not admits("mlops-model-metadata", isvc)
    del isvc["metadata"]["labels"]
    assert not admits("mlops-model-metadata", isvc)
