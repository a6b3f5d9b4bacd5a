"""infra_cdktf: every stack synthesized with cdktn.Testing, and the properties that matter asserted on the JSON."""

from __future__ import annotations

import json
import sys

import pytest

from mlops_infra.charts import CHARTS
from mlops_infra.config import ENVIRONMENTS, SERVICE_ACCOUNTS
from mlops_infra.outputs import CONTRACT
from tests.infra.conftest import contract_outputs, releases, resources, values
from tests.support import REPO


def only(doc: dict, kind: str) -> dict:
    [value] = resources(doc, kind).values()
    return value


def test_six_environments_with_one_output_contract(stacks):
    environments = ["aws-dev", "aws-prod", "azure-dev", "azure-prod", "gcp-dev", "gcp-prod"]
    assert sorted(stacks) == sorted([*environments, *[f"{e}-platform" for e in environments]])
    for env_id in environments:
        assert contract_outputs(stacks[env_id]) == set(CONTRACT), env_id
        assert not contract_outputs(stacks[f"{env_id}-platform"]), env_id


@pytest.mark.parametrize("env_id", sorted(ENVIRONMENTS))
def test_the_platform_stack_reaches_the_cluster_through_the_cloud_stacks_state(stacks, env_id):
    """The cluster is made in the cloud stack; the platform stack's Helm and Kubernetes providers read its endpoint
    and CA from that stack's state, known at plan time, and make nothing in the cloud. The cloud stack has no
    Kubernetes or Helm resource, so it plans without a cluster."""
    cloud, platform = stacks[env_id], stacks[f"{env_id}-platform"]
    assert not {k for k in cloud["resource"] if k.startswith(("kubernetes_", "helm_"))}
    assert not set(cloud.get("provider", {})) & {"kubernetes", "helm"}
    made = set(platform["resource"])
    assert made <= {"helm_release", "kubernetes_namespace_v1", "kubernetes_service_account_v1"}, made
    [state] = platform["data"]["terraform_remote_state"].values()
    assert state["config"]["path"].endswith(f"terraform.{env_id}.tfstate")
    for provider in ("kubernetes", "helm"):
        [config] = platform["provider"][provider]
        config = config.get("kubernetes", config)
        for key in ("host", "cluster_ca_certificate"):
            assert "data.terraform_remote_state.cross-stack-reference-input" in config[key], (provider, key)
        # A token, where there is one, is the deployer's own, read at apply time, never a value from state.
        assert "terraform_remote_state" not in config.get("token", "")


def test_kubernetes_is_1_33_or_newer(synthesized):
    versions = [only(synthesized["aws-dev"], "aws_eks_cluster")["version"],
                only(synthesized["azure-dev"], "azurerm_kubernetes_cluster")["kubernetes_version"],
                only(synthesized["gcp-dev"], "google_container_cluster")["min_master_version"]]
    assert all(tuple(map(int, v.split("."))) >= (1, 33) for v in versions)


@pytest.mark.parametrize("stage", ["dev", "prod"])
def test_gpu_pools_are_spot_tainted_and_scale_to_zero(synthesized, stage):
    manifests = json.loads(releases(synthesized[f"aws-{stage}"])["karpenter-node-pools"]["values"][0])["resources"]
    gpu = next(m for m in manifests if m["kind"] == "NodePool" and m["metadata"]["name"] == "gpu")["spec"]["template"]
    assert {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]} in gpu["spec"]["requirements"]
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NoSchedule"} in gpu["spec"]["taints"]
    assert not any(m["kind"] == "NodePool" and "replicas" in m["spec"] for m in manifests)  # Karpenter starts at zero
    azure = resources(synthesized[f"azure-{stage}"], "azurerm_kubernetes_cluster_node_pool")["pool-gpu"]
    assert azure["priority"] == "Spot" and azure["min_count"] == 0 and azure["auto_scaling_enabled"]
    assert "nvidia.com/gpu=true:NoSchedule" in azure["node_taints"]
    gcp = resources(synthesized[f"gcp-{stage}"], "google_container_node_pool")["pool-gpu"]
    assert gcp["node_config"]["spot"] is True and gcp["autoscaling"]["total_min_node_count"] == 0
    assert {"key": "nvidia.com/gpu", "value": "true", "effect": "NO_SCHEDULE"} in gcp["node_config"]["taint"]
    assert gcp["node_config"]["guest_accelerator"][0]["type"] == "nvidia-l4"
    training = resources(synthesized[f"gcp-{stage}"], "google_container_node_pool")["pool-training"]
    assert training["node_config"]["spot"] is True and training["autoscaling"]["total_min_node_count"] == 0
    system = resources(synthesized[f"gcp-{stage}"], "google_container_node_pool")["pool-system"]
    assert system["node_config"]["spot"] is False


def test_dagster_gpu_placement_matches_the_pools(synthesized):
    from mlops_platform.defs.profiles import GPU_NODE_SELECTORS

    assert GPU_NODE_SELECTORS["aws"] == {"karpenter.sh/nodepool": "gpu"}  # the NodePool's name
    assert resources(synthesized["azure-prod"], "azurerm_kubernetes_cluster_node_pool")["pool-gpu"]["name"] == \
        GPU_NODE_SELECTORS["azure"]["kubernetes.azure.com/agentpool"]
    gpu_pool = resources(synthesized["gcp-prod"], "google_container_node_pool")["pool-gpu"]
    assert gpu_pool["node_config"]["guest_accelerator"][0]["type"] == GPU_NODE_SELECTORS["gcp"]["cloud.google.com/gke-accelerator"]


def test_storage_is_encrypted_versioned_and_never_public(synthesized):
    for stage in ("dev", "prod"):
        aws = synthesized[f"aws-{stage}"]
        block = only(aws, "aws_s3_bucket_public_access_block")
        assert all(block[k] for k in ("block_public_acls", "block_public_policy", "ignore_public_acls", "restrict_public_buckets"))
        sse = only(aws, "aws_s3_bucket_server_side_encryption_configuration")["rule"][0]
        assert sse["apply_server_side_encryption_by_default"]["sse_algorithm"] == "aws:kms"
        assert only(aws, "aws_s3_bucket_versioning_a" if resources(aws, "aws_s3_bucket_versioning_a") else "aws_s3_bucket_versioning")[
            "versioning_configuration"]["status"] == "Enabled"
        azure = resources(synthesized[f"azure-{stage}"], "azurerm_storage_account")["storage"]
        assert azure["allow_nested_items_to_be_public"] is False and azure["shared_access_key_enabled"] is False
        assert azure["infrastructure_encryption_enabled"] is True and azure["min_tls_version"] == "TLS1_2"
        assert only(synthesized[f"azure-{stage}"], "azurerm_storage_container")["container_access_type"] == "private"
        gcs = only(synthesized[f"gcp-{stage}"], "google_storage_bucket")
        assert gcs["public_access_prevention"] == "enforced" and gcs["uniform_bucket_level_access"] is True
        assert gcs["versioning"]["enabled"] is True and "default_kms_key_name" in gcs["encryption"]


def test_databases_are_private_encrypted_and_backed_up(synthesized):
    for stage, retention in (("dev", 7), ("prod", 30)):
        rds = only(synthesized[f"aws-{stage}"], "aws_db_instance")
        assert rds["publicly_accessible"] is False and rds["storage_encrypted"] is True
        assert rds["backup_retention_period"] == retention
        assert rds["multi_az"] is (stage == "prod") and rds["deletion_protection"] is (stage == "prod")
        pg = only(synthesized[f"azure-{stage}"], "azurerm_postgresql_flexible_server")
        assert pg["public_network_access_enabled"] is False and "delegated_subnet_id" in pg
        assert (pg.get("high_availability") or {}).get("mode") == ("ZoneRedundant" if stage == "prod" else None)
        sql = only(synthesized[f"gcp-{stage}"], "google_sql_database_instance")
        assert sql["settings"]["ip_configuration"]["ipv4_enabled"] is False
        assert sql["settings"]["backup_configuration"]["point_in_time_recovery_enabled"] is True
        assert sql["settings"]["availability_type"] == ("REGIONAL" if stage == "prod" else "ZONAL")


def test_prod_control_planes_are_private_and_highly_available(synthesized):
    eks = {s: only(synthesized[f"aws-{s}"], "aws_eks_cluster") for s in ("dev", "prod")}
    assert eks["prod"]["vpc_config"]["endpoint_public_access"] is False and eks["dev"]["vpc_config"]["endpoint_public_access"]
    assert eks["prod"]["encryption_config"]["resources"] == ["secrets"]
    assert len(resources(synthesized["aws-prod"], "aws_nat_gateway")) == 3 and len(resources(synthesized["aws-dev"], "aws_nat_gateway")) == 1
    aks = only(synthesized["azure-prod"], "azurerm_kubernetes_cluster")
    assert aks["private_cluster_enabled"] is True and aks["sku_tier"] == "Standard" and aks["local_account_disabled"] is True
    gke = {s: only(synthesized[f"gcp-{s}"], "google_container_cluster") for s in ("dev", "prod")}
    assert gke["prod"]["location"] == "europe-west4" and gke["dev"]["location"] == "europe-west4-a"  # regional vs zonal
    assert gke["prod"]["private_cluster_config"]["enable_private_endpoint"] is True
    assert gke["prod"]["deletion_protection"] is True and gke["dev"]["deletion_protection"] is False
    assert gke["prod"]["cluster_autoscaling"]["enabled"] is True  # node auto-provisioning
    system = {s: only(synthesized[f"aws-{s}"], "aws_eks_node_group")["scaling_config"]["min_size"] for s in ("dev", "prod")}
    assert system["prod"] > system["dev"]


def test_networks_log_their_flows(synthesized):
    assert only(synthesized["aws-prod"], "aws_flow_log")["traffic_type"] == "ALL"
    assert only(synthesized["azure-prod"], "azurerm_network_watcher_flow_log")["enabled"] is True
    assert "log_config" in only(synthesized["gcp-prod"], "google_compute_subnetwork")


def test_workload_identities_bind_exactly_the_platform_service_accounts(synthesized):
    subjects = {f"system:serviceaccount:{ns}:{sa}" for ns, sa in SERVICE_ACCOUNTS.values()}
    aws = synthesized["aws-prod"]
    trust = aws["data"]["aws_iam_policy_document"]
    for component, (ns, sa) in SERVICE_ACCOUNTS.items():
        [statement] = trust[f"irsa-{component}-trust"]["statement"]
        conditions = {c["variable"].rsplit(":", 1)[1]: c["values"] for c in statement["condition"]}
        assert conditions == {"sub": [f"system:serviceaccount:{ns}:{sa}"], "aud": ["sts.amazonaws.com"]}
        assert statement["principals"][0]["type"] == "Federated"
        role = resources(aws, "aws_iam_role")[f"irsa-{component}"]
        assert role["assume_role_policy"] == f"${{data.aws_iam_policy_document.irsa-{component}-trust.json}}"
    azure = {c["subject"] for c in resources(synthesized["azure-prod"], "azurerm_federated_identity_credential").values()}
    assert subjects <= azure
    gcp = {m["member"] for m in resources(synthesized["gcp-prod"], "google_service_account_iam_member").values()
           if m["role"] == "roles/iam.workloadIdentityUser"}
    assert {f"serviceAccount:${{var.project_id}}.svc.id.goog[{ns}/{sa}]" for ns, sa in SERVICE_ACCOUNTS.values()} <= gcp
    for stack_id, key in (("aws-prod", "eks.amazonaws.com/role-arn"), ("azure-prod", "azure.workload.identity/client-id"),
                          ("gcp-prod", "iam.gke.io/gcp-service-account")):
        accounts = resources(synthesized[stack_id], "kubernetes_service_account_v1").values()
        assert len(accounts) == len(SERVICE_ACCOUNTS) and all(key in a["metadata"]["annotations"] for a in accounts)
    # no static keys anywhere
    for doc in synthesized.values():
        assert not resources(doc, "aws_iam_access_key") and not resources(doc, "google_service_account_key")


@pytest.mark.parametrize("stack_id", sorted(ENVIRONMENTS))
def test_platform_releases_pinned_in_one_place(synthesized, stack_id):
    installed = releases(synthesized[stack_id])
    by_chart = {(c.repository, c.chart): c for c in CHARTS.values()}
    for release in installed.values():
        chart = by_chart[(release["repository"], release["chart"])]
        assert release["version"] == chart.version and release["namespace"] == chart.namespace
    required = {"cert-manager", "envoy-gateway", "kserve-crd", "kserve", "kube-prometheus-stack", "kyverno",
                "kyverno-policies", "external-secrets", "gpu-operator", "dagster", "mlflow", "platform-manifests",
                "platform-gateway", "platform-monitoring"}
    assert required <= set(installed)
    assert not {"argo-workflows", "argo-cd"} & set(installed), "nothing uses Argo: it is not installed"
    assert ("karpenter" in installed) is stack_id.startswith("aws")
    assert "keda" not in installed, "KEDA is AKS's add-on on Azure, and unused elsewhere"
    kserve = json.loads(installed["kserve"]["values"][0])["kserve"]["controller"]
    assert kserve["deploymentMode"] == "Standard" and kserve["gateway"]["ingressGateway"]["enableGatewayApi"] is True
    dagster = json.loads(installed["dagster"]["values"][0]) if isinstance(installed["dagster"]["values"][0], str) else {}
    assert dagster["runLauncher"]["type"] == "K8sRunLauncher" and dagster["postgresql"]["enabled"] is False
    assert f"MLOPS_PROFILE={stack_id.split('-')[0]}" in dagster["runLauncher"]["config"]["k8sRunLauncher"]["envVars"]


def test_checkov_skip_list_gives_every_skip_a_reason():
    sys.path.insert(0, str(REPO / "infra_cdktf"))
    from scan import load_skips

    skips = load_skips()
    assert skips and all(len(entry["reason"]) > 20 for entry in skips.values())
    stacks = set(ENVIRONMENTS)
    assert all(set(entry.get("stacks", [])) <= stacks for entry in skips.values())


def test_dagster_run_environment_is_what_the_profile_reads(synthesized):
    """The variable names live in `defs/profiles.py`: the run environment sets every variable the cloud profile
    needs with the cluster's serving, and none it does not read (a rename on one side would show here)."""
    from mlops_platform.defs.profiles import PROFILE_ENV, SDK_VARIABLES, VARIABLES, required_env

    for stack_id, doc in synthesized.items():
        cloud = stack_id.split("-")[0]
        values = json.loads(releases(doc)["dagster"]["values"][0])
        run_env = dict(v.split("=", 1) for v in values["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
        assert run_env[PROFILE_ENV] == cloud
        assert set(required_env(cloud)) <= set(run_env), (stack_id, set(required_env(cloud)) - set(run_env))
        known = {v.name for v in VARIABLES if cloud in v.profiles} | {s.name for s in SDK_VARIABLES if s.cloud == cloud}
        assert set(run_env) - {PROFILE_ENV} <= known, (stack_id, set(run_env) - known)
        code_server = values["dagster-user-deployments"]["deployments"][0]["env"]
        assert {e["name"]: e["value"] for e in code_server} == run_env, "the code server loads the same profile"


def test_model_servers_are_reachable_only_from_the_gateway_prometheus_and_dagster(synthesized):
    """The stacks apply every policy in deploy/network (tests/infra/test_network_policies.py checks their flows)."""
    import kubernetes_validate
    import yaml

    on_disk = [d for p in sorted((REPO / "deploy" / "network").glob("*.yaml")) for d in yaml.safe_load_all(p.read_text())]
    for stack_id, doc in synthesized.items():
        manifests = json.loads(releases(doc)["platform-manifests"]["values"][0])["resources"]
        applied = [m for m in manifests if m["kind"] == "NetworkPolicy"]
        assert sorted((m["metadata"]["namespace"], m["metadata"]["name"]) for m in applied) == sorted(
            (d["metadata"]["namespace"], d["metadata"]["name"]) for d in on_disk), stack_id
        [policy] = [m for m in applied if m["metadata"]["name"] == "model-servers-ingress"]
        kubernetes_validate.validate(policy, "1.33", strict=True)
        assert policy["metadata"]["namespace"] == SERVICE_ACCOUNTS["kserve"][0], stack_id
        [rule] = policy["spec"]["ingress"]
        allowed = {peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for peer in rule["from"]}
        assert allowed == {CHARTS["envoy-gateway"].namespace, CHARTS["kube-prometheus-stack"].namespace,
                           CHARTS["dagster"].namespace}
        assert rule["ports"] == [{"protocol": "TCP", "port": 8080}] and policy["spec"]["podSelector"] == {}


def test_azure_platform_pods_can_schedule_and_the_deployer_is_authorized(synthesized):
    """AKS: an untainted on-demand pool takes the platform's pods (the system pool takes only critical add-ons, the
    others are spot-tainted), the deployer may write the vault's secret and administer the cluster, Dagster's
    database exists, KEDA is the add-on's alone, and the GPU operator tolerates the spot taint on the GPU pool."""
    for stack_id in ("azure-dev", "azure-prod"):
        doc = synthesized[stack_id]
        cluster = only(doc, "azurerm_kubernetes_cluster")
        assert cluster["default_node_pool"]["only_critical_addons_enabled"] is True
        untainted = [p for p in resources(doc, "azurerm_kubernetes_cluster_node_pool").values()
                     if not p.get("node_taints") and p.get("priority", "Regular") == "Regular"]
        assert [p["name"] for p in untainted] == ["platform"] and untainted[0]["min_count"] >= 1
        roles = {r["role_definition_name"]: r for r in resources(doc, "azurerm_role_assignment").values()}
        assert "data.azurerm_client_config.client" in roles["Key Vault Secrets Officer"]["principal_id"]
        assert "data.azurerm_client_config.client" in roles["Azure Kubernetes Service RBAC Cluster Admin"]["principal_id"]
        secret = only(doc, "azurerm_key_vault_secret")
        assert any("vault-deployer" in d for d in secret["depends_on"])
        assert [d["name"] for d in resources(doc, "azurerm_postgresql_flexible_server_database").values()] == ["dagster"]
        installed = releases(doc)
        assert "keda" not in installed
        tolerations = json.loads(installed["gpu-operator"]["values"][0])["daemonsets"]["tolerations"]
        assert {"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
                "effect": "NoSchedule"} in tolerations


def test_gcp_cmek_agents_are_granted_and_the_dev_deployer_reaches_the_api(synthesized):
    for stack_id in ("gcp-dev", "gcp-prod"):
        doc = synthesized[stack_id]
        grants = resources(doc, "google_kms_crypto_key_iam_member")
        members = " ".join(g["member"] for g in grants.values())
        for agent in ("gcp-sa-cloud-sql", "gcp-sa-artifactregistry", "container-engine-robot", "google_storage_project"):
            assert agent in members, (stack_id, agent)
        for kind in ("google_storage_bucket", "google_sql_database_instance", "google_artifact_registry_repository",
                     "google_container_cluster"):
            assert any("cmek" in d for d in only(doc, kind)["depends_on"]), (stack_id, kind)
        networks = only(doc, "google_container_cluster")["master_authorized_networks_config"]["cidr_blocks"]
        deployer = [n for n in networks if n["display_name"] == "deployer"]
        assert bool(deployer) is stack_id.endswith("dev"), "dev's public endpoint lets the deployer in; prod's is private"


def test_aws_node_pools_wait_for_karpenter_and_volumes_have_a_driver(synthesized):
    for stack_id in ("aws-dev", "aws-prod"):
        doc = synthesized[stack_id]
        installed = releases(doc)
        pools = installed["karpenter-node-pools"]
        assert any("karpenter" in d and "pools" not in d for d in pools["depends_on"])
        kinds = {r["kind"] for r in json.loads(pools["values"][0])["resources"]}
        assert kinds == {"EC2NodeClass", "NodePool"}
        platform = json.loads(installed["platform-manifests"]["values"][0])["resources"]
        assert not [r for r in platform if r["kind"] in ("NodePool", "EC2NodeClass")]
        addon = only(doc, "aws_eks_addon")
        assert addon["addon_name"] == "aws-ebs-csi-driver" and "irsa-ebs-csi" in addon["service_account_role_arn"]


def test_prod_pod_security_leaves_the_gpu_operator_and_node_exporter_their_host_access(synthesized):
    for stack_id, doc in synthesized.items():
        policies = json.loads(releases(doc)["kyverno-policies"]["values"][0])
        assert policies["validationFailureAction"] == ("Enforce" if stack_id.endswith("prod") else "Audit")
        assert "policyExclude" not in policies, "the chart's ValidatingPolicies ignore policyExclude"
        for policy in ("disallow-privileged-containers", "disallow-host-path", "disallow-host-namespaces"):
            assert {"gpu-operator", "monitoring"} <= set(policies["vpolExcludeByPolicy"][policy]["excludeNamespaces"])


def test_mlflow_and_dagster_get_what_their_charts_read(synthesized):
    """MLflow's chart reads the user name and the password from the synced secret (usernameKey, passwordKey); the
    images are tagged with a version, never `latest` (the registries are immutable); Prometheus keeps its data on a
    volume; Dagster's pool limit reaches the instance through a key the chart has (additionalInstanceConfig)."""
    for stack_id, doc in synthesized.items():
        installed = releases(doc)
        manifests = json.loads(installed["platform-manifests"]["values"][0])["resources"]
        [secret] = [m for m in manifests if m["kind"] == "ExternalSecret" and m["metadata"]["name"] == "mlflow-db"]
        mlflow = json.loads(installed["mlflow"]["values"][0])["backendStore"]["existingDatabaseSecret"]
        template = secret["spec"]["target"]["template"]["data"]
        assert {mlflow["usernameKey"], mlflow["passwordKey"]} <= set(template), stack_id
        dagster = json.loads(installed["dagster"]["values"][0])
        [deployment] = dagster["dagster-user-deployments"]["deployments"]
        assert deployment["image"]["tag"] not in ("", "latest")
        assert dagster["additionalInstanceConfig"]["concurrency"]["pools"]["default_limit"] == 2
        assert "dagsterInstance" not in dagster
        run_env = dict(v.split("=", 1) for v in dagster["runLauncher"]["config"]["k8sRunLauncher"]["envVars"])
        assert run_env["MLOPS_SERVING_IMAGE"].endswith(f"/mlops-serving:{deployment['image']['tag']}")
        prometheus = json.loads(installed["kube-prometheus-stack"]["values"][0])["prometheus"]["prometheusSpec"]
        assert prometheus["storageSpec"]["volumeClaimTemplate"]["spec"]["resources"]["requests"]["storage"]
    local = synthesized["aws-dev"]["locals"]["registry"]
    assert "replace(" in local and "/mlops-serving" in local, "the registry keeps the repositories' path prefix"


@pytest.mark.parametrize("stack_id", sorted(ENVIRONMENTS))
def test_workload_identity_labels_are_on_the_pods_not_the_service_accounts(synthesized, stack_id):
    """Azure Workload Identity's webhook acts on pods labelled `azure.workload.identity/use`; on a service account the
    label does nothing, and no pod would get a token. Every pod that uses a cloud identity carries the profile's
    label: Dagster's runs and steps (the launcher's labels), its code server, MLflow's server and External Secrets;
    the predictors get it from the profile itself (tests/integrations/test_kserve_backend.py)."""
    from mlops_platform.defs.profiles import WORKLOAD_IDENTITY_POD_LABELS

    cloud = stack_id.split("-")[0]
    expected = WORKLOAD_IDENTITY_POD_LABELS[cloud]
    doc = synthesized[stack_id]
    for account in resources(doc, "kubernetes_service_account_v1").values():
        assert "azure.workload.identity/use" not in account["metadata"].get("labels", {}), account
        if cloud == "azure":
            assert "azure.workload.identity/client-id" in account["metadata"]["annotations"]
    installed = {name: values(release) for name, release in releases(doc).items()}
    dagster = installed["dagster"]
    assert dagster["runLauncher"]["config"]["k8sRunLauncher"]["labels"] == expected
    assert dagster["dagster-user-deployments"]["deployments"][0]["labels"] == expected
    assert installed["mlflow"]["extraPodLabels"] == expected
    assert installed["external-secrets"]["podLabels"] == expected
    assert "extraLabels" not in installed["external-secrets"].get("serviceAccount", {})
