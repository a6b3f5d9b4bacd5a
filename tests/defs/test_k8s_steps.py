"""GPU and CPU steps on Kubernetes: the Jobs dagster-k8s would submit, built with its own code, for every cloud."""

from __future__ import annotations

import kubernetes_validate
import pytest
from dagster_k8s.job import DagsterK8sJobConfig, construct_dagster_k8s_job, get_user_defined_k8s_config
from kubernetes.client import ApiClient

from mlops_platform.defs.model_assets import GPU_POOL, job_name
from mlops_platform.defs.profiles import GPU_NODE_SELECTORS, GPU_TAINT
from tests.support import breast_cancer

K8S_VERSION = "1.33"
CLOUDS = ["aws", "azure", "gcp"]


def _defs(profile: str):
    from mlops_platform.core.spec import load_specs
    from mlops_platform.definitions import build_definitions

    return build_definitions(specs=load_specs(), profile=profile)


def _step_job(profile: str, model: str, asset: str) -> dict:
    """The step's op tags as the executor reads them, turned into a Job by dagster-k8s's construct_dagster_k8s_job."""
    job = _defs(profile).resolve_job_def(f"{model}_train_and_deploy")
    node = job.graph.node_named(f"{model}__{asset}")
    tags = node.definition.tags
    config = DagsterK8sJobConfig(job_image="registry.example.com/mlops-platform:1.0", dagster_home="/opt/dagster/dagster_home",
                                 instance_config_map="dagster-instance", image_pull_policy="IfNotPresent")
    k8s_job = construct_dagster_k8s_job(
        job_config=config,
        args=["dagster", "api", "execute_step"],
        job_name=f"dagster-step-{model}-{asset}".replace("_", "-"),
        pod_name=f"dagster-step-{model}-{asset}".replace("_", "-"),
        component="step_worker",
        user_defined_k8s_config=get_user_defined_k8s_config(tags),
        labels={"dagster/job": job.name, "dagster/op": node.name},
    )
    manifest = ApiClient().sanitize_for_serialization(k8s_job)
    manifest.update(apiVersion="batch/v1", kind="Job")
    kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
    return manifest


def _pod(manifest: dict) -> dict:
    return manifest["spec"]["template"]["spec"]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gpu_training_step_requests_a_gpu_on_the_gpu_pool(platform_home, cloud):
    pod = _pod(_step_job(cloud, "digits", "trained_model"))
    resources = pod["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == "1"
    assert resources["requests"]["nvidia.com/gpu"] == "1"
    assert resources["limits"]["memory"] == resources["requests"]["memory"]
    assert GPU_TAINT in pod["tolerations"]
    assert pod["nodeSelector"] == GPU_NODE_SELECTORS[cloud]


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("model, asset", [("digits", "landing_batches"), ("digits", "endpoint"), ("breast_cancer", "trained_model")])
def test_cpu_steps_get_no_gpu(platform_home, cloud, model, asset):
    pod = _pod(_step_job(cloud, model, asset))
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources.get("limits", {}) and "nvidia.com/gpu" not in resources.get("requests", {})
    assert resources["requests"]["cpu"] == "500m"
    assert not pod.get("tolerations") and not pod.get("nodeSelector")


def test_gpu_steps_share_one_pool_and_cpu_steps_none(platform_home):
    graph = _defs("local").resolve_asset_graph()
    pools = {key.to_user_string(): graph.get(key).pools for key in graph.get_all_asset_keys()}
    assert pools["digits/trained_model"] == {GPU_POOL}
    assert not pools["breast_cancer/trained_model"]
    assert not pools["digits/endpoint"]


def test_the_instance_caps_gpu_steps(platform_home):
    import dagster as dg

    with dg.DagsterInstance.get() as instance:
        assert instance.get_concurrency_config().pool_config.default_pool_limit == 1


@pytest.mark.parametrize("profile, executor", [("local", "in_process"), ("aws", "k8s"), ("azure", "k8s"), ("gcp", "k8s")])
def test_each_profile_chooses_its_executor(platform_home, profile, executor):
    job = _defs(profile).resolve_job_def(job_name(breast_cancer()))
    assert job.executor_def.name == executor


def test_cloud_instance_config_launches_on_kubernetes_and_caps_gpu_steps(monkeypatch):
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher

    from tests.support import REPO

    config, _ = dagster_instance_config(str(REPO / "deploy" / "dagster"), "instance.yaml")
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    monkeypatch.setenv("DAGSTER_K8S_NAMESPACE", "dagster")  # the launcher's config resolves it, as in the cluster
    launcher = process_config(K8sRunLauncher.config_type(), config["run_launcher"]["config"])
    assert launcher.success, launcher.errors
    assert config["concurrency"]["pools"]["default_limit"] == 2
