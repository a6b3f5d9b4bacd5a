"""Serving in a Kubernetes cluster: an InferenceService running the platform's own KServe runtime image."""

from __future__ import annotations

from typing import Any


from mlops_platform.defs.resources import Endpoint, ModelServing

RUNTIME_PORT = 8080
VERSION_ENV = "MLOPS_CHAMPION_VERSION"


def inference_service(
    name: str,
    version: str,
    *,
    namespace: str,
    image: str,
    tracking_uri: str,
    service_account: str | None = None,
    deployment_mode: str = "Standard",
) -> Any:
    """The InferenceService for one model: our runtime as the predictor container, pinned to a champion version.

    The version sits in the pod's environment so that a new champion changes the pod template and KServe rolls out.
    """
    from kserve import V1beta1InferenceService, V1beta1InferenceServiceSpec, V1beta1PredictorSpec, constants
    from kubernetes.client import V1Container, V1ContainerPort, V1EnvVar, V1ObjectMeta, V1ResourceRequirements

    container = V1Container(
        name="kserve-container",
        image=image,
        command=["python", "-m", "mlops_platform.serving"],
        args=["--host", "0.0.0.0", "--port", str(RUNTIME_PORT), "--tracking-uri", tracking_uri],
        env=[V1EnvVar(name=VERSION_ENV, value=version)],
        ports=[V1ContainerPort(container_port=RUNTIME_PORT, protocol="TCP")],
        resources=V1ResourceRequirements(requests={"cpu": "500m", "memory": "1Gi"}, limits={"memory": "2Gi"}),
    )
    return V1beta1InferenceService(
        api_version=constants.KSERVE_V1BETA1,
        kind=constants.KSERVE_KIND_INFERENCESERVICE,
        metadata=V1ObjectMeta(
            name=name,
            namespace=namespace,
            annotations={"serving.kserve.io/deploymentMode": deployment_mode},
            labels={"app.kubernetes.io/part-of": "mlops-platform", "mlops.platform/model": name},
        ),
        spec=V1beta1InferenceServiceSpec(
            predictor=V1beta1PredictorSpec(containers=[container], service_account_name=service_account, min_replicas=1)
        ),
    )


class KServeClusterServing(ModelServing):
    """Creates or updates an InferenceService per model and waits until KServe reports it ready."""

    namespace: str
    image: str
    tracking_uri: str
    service_account: str | None = None
    base_url: str | None = None
    deployment_mode: str = "Standard"
    ready_timeout_s: int = 600

    def client(self) -> Any:
        from kserve import KServeClient

        return KServeClient()

    def deploy(self, name: str, version: str) -> Endpoint:
        from kubernetes.client.rest import ApiException

        isvc = inference_service(name, version, namespace=self.namespace, image=self.image,
                                 tracking_uri=self.tracking_uri, service_account=self.service_account,
                                 deployment_mode=self.deployment_mode)
        client = self.client()
        try:
            client.get(name, namespace=self.namespace)
            client.patch(name, isvc, namespace=self.namespace)
        except (ApiException, RuntimeError) as exc:
            if getattr(exc, "status", None) not in (404, None) and "Not Found" not in str(exc):
                raise
            client.create(isvc, namespace=self.namespace)
        client.wait_isvc_ready(name, namespace=self.namespace, timeout_seconds=self.ready_timeout_s)
        url = self.base_url or client.get(name, namespace=self.namespace)["status"]["url"]
        return Endpoint(name=name, version=version, base_url=url.rstrip("/"))



