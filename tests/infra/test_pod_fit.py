"""Every pod the platform schedules fits the allocatable CPU and memory of a node pool that tolerates it, for each
machine type the environments pick. Allocatable is the machine less what each cloud reserves for the kubelet and
the system (its published formula) and the DaemonSets the platform runs on every node of that pool."""

from __future__ import annotations

import pytest
import yaml

from mlops_infra.config import ENVIRONMENTS
from mlops_platform.defs.profiles import cpu_step_tags, gpu_step_tags
from mlops_platform.integrations.serving.kserve import predictor_spec
from tests.support import REPO

GiB = 1024**3
# vCPUs and memory (GiB) of the machine types the environments use, from each cloud's instance type pages.
MACHINES = {
    # aws.amazon.com/ec2/instance-types (m6i, c6i, g6)
    "m6i.large": (2, 8), "c6i.2xlarge": (8, 16), "g6.xlarge": (4, 16), "g6.2xlarge": (8, 32),
    # learn.microsoft.com/azure/virtual-machines/sizes (Dsv5, Fsv2, NCasT4_v3)
    "Standard_D4s_v5": (4, 16), "Standard_F8s_v2": (8, 16), "Standard_NC4as_T4_v3": (4, 28),
    "Standard_NC8as_T4_v3": (8, 56),
    # cloud.google.com/compute/docs (e2, c2, g2)
    "e2-standard-4": (4, 16), "c2-standard-8": (8, 32), "g2-standard-4": (4, 16), "g2-standard-8": (8, 32),
}
EVICTION_GIB = 100 / 1024  # memory.available<100Mi on all three
MAX_PODS = {"aws": 58, "azure": 30, "gcp": 110}  # ENI limit of g6.2xlarge-class nodes; Azure CNI default; GKE default
# What the platform's DaemonSets request on every node of a pool (node-exporter, the CNI and CSI agents; on GPU nodes
# also the GPU operator's device plugin, DCGM exporter and feature discovery): a budget, kept deliberately generous.
DAEMONSETS = {"cpu": (0.5, 1.0), "gpu": (1.0, 2.0)}


def cpu_reserved(vcpus: int) -> float:
    """The kube-reserved CPU all three clouds use: 6% of the first core, 1% of the second, 0.5% of the next two,
    0.25% of the rest (EKS AMI bootstrap, GKE and AKS docs on node allocatable)."""
    shares = [0.06, 0.01, 0.005, 0.005]
    return sum(shares[i] if i < 4 else 0.0025 for i in range(vcpus))


def memory_reserved(cloud: str, memory_gib: float) -> float:
    if cloud == "gcp":  # 25% of the first 4 GiB, 20% of the next 4, 10% of the next 8, 6% of the next 112, 2% above
        tiers = [(4, 0.25), (4, 0.20), (8, 0.10), (112, 0.06), (float("inf"), 0.02)]
        left, reserved = memory_gib, 0.0
        for size, share in tiers:
            reserved += min(left, size) * share
            left -= min(left, size)
        return reserved
    if cloud == "aws":  # 11 MiB per pod + 255 MiB
        return (11 * MAX_PODS["aws"] + 255) / 1024
    return (20 * MAX_PODS["azure"] + 50) * 1e6 / GiB  # AKS 1.29+: 20 MB per pod + 50 MB


def allocatable(cloud: str, machine: str, pool: str) -> tuple[float, float]:
    vcpus, memory = MACHINES[machine]
    ds_cpu, ds_memory = DAEMONSETS[pool]
    return (vcpus - cpu_reserved(vcpus) - ds_cpu,
            memory - memory_reserved(cloud, memory) - EVICTION_GIB - ds_memory)


def quantity(value: str) -> float:
    """CPU in cores, memory in GiB, from a Kubernetes quantity."""
    units = {"m": 1e-3, "Ki": 1024 / GiB, "Mi": 1024**2 / GiB, "Gi": 1.0}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


def requests_of(tags: dict) -> tuple[float, float]:
    requests = tags["dagster-k8s/config"]["container_config"]["resources"]["requests"]
    return quantity(requests["cpu"]), quantity(requests["memory"])


@pytest.mark.parametrize("stack_id", sorted(ENVIRONMENTS))
def test_every_pod_fits_a_pool_that_tolerates_it(stack_id):
    env = ENVIRONMENTS[stack_id]
    gpu_cpu, gpu_memory = allocatable(env.cloud, env.gpu_pool.machine_type, "gpu")
    step = requests_of(gpu_step_tags(env.cloud))
    assert step[0] <= gpu_cpu and step[1] <= gpu_memory, (
        f"{stack_id}: a GPU training step requests {step} (CPU, GiB); {env.gpu_pool.machine_type} leaves "
        f"{gpu_cpu:.2f} CPU and {gpu_memory:.1f} GiB")
    # Steps without a GPU, the run pods and the model servers tolerate no taint: they go to the system pool (the
    # training pool is spot and tainted on Azure).
    system = allocatable(env.cloud, env.system_pool.machine_type, "cpu")
    instance = yaml.safe_load((REPO / "deploy" / "dagster" / "instance.yaml").read_text())
    run_pod = instance["run_launcher"]["config"]["run_k8s_config"]["container_config"]["resources"]["requests"]
    predictor = predictor_spec("m", "1", "stable", image="i", tracking_uri="t", service_account=None,
                               storage_uris={"1": "s3://b/m"}).containers[0].resources.requests
    for name, (cpu, memory) in {"cpu step": requests_of(cpu_step_tags()),
                                "run pod": (quantity(run_pod["cpu"]), quantity(run_pod["memory"])),
                                "model server": (quantity(predictor["cpu"]), quantity(predictor["memory"]))}.items():
        assert cpu <= system[0] and memory <= system[1], (stack_id, name, (cpu, memory), system)


def test_the_gpu_machines_we_had_could_not_take_a_training_step():
    """What this test would have said of g6.xlarge, g2-standard-4 and NC4as_T4_v3 (4 vCPUs each)."""
    for cloud, machine in (("aws", "g6.xlarge"), ("gcp", "g2-standard-4"), ("azure", "Standard_NC4as_T4_v3")):
        cpu, memory = allocatable(cloud, machine, "gpu")
        step_cpu, step_memory = requests_of(gpu_step_tags(cloud))
        assert step_cpu > cpu or step_memory > memory, machine
