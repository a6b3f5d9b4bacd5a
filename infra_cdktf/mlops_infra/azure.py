"""Azure environment: VNet, AKS with KEDA and the cluster autoscaler, Storage, PostgreSQL Flexible Server, ACR,
Azure Workload Identity, Key Vault; the platform stack goes on top."""

from __future__ import annotations

from cdktn import Fn, TerraformStack
from cdktn_provider_azurerm.container_registry import ContainerRegistry
from cdktn_provider_azurerm.data_azurerm_client_config import DataAzurermClientConfig
from cdktn_provider_azurerm.federated_identity_credential import FederatedIdentityCredential
from cdktn_provider_azurerm.key_vault import KeyVault
from cdktn_provider_azurerm.key_vault_secret import KeyVaultSecret
from cdktn_provider_azurerm.kubernetes_cluster import KubernetesCluster
from cdktn_provider_azurerm.kubernetes_cluster_node_pool import KubernetesClusterNodePool
from cdktn_provider_azurerm.log_analytics_workspace import LogAnalyticsWorkspace
from cdktn_provider_azurerm.nat_gateway import NatGateway
from cdktn_provider_azurerm.nat_gateway_public_ip_association import NatGatewayPublicIpAssociation
from cdktn_provider_azurerm.network_security_group import NetworkSecurityGroup
from cdktn_provider_azurerm.network_watcher import NetworkWatcher
from cdktn_provider_azurerm.network_watcher_flow_log import NetworkWatcherFlowLog
from cdktn_provider_azurerm.postgresql_flexible_server import PostgresqlFlexibleServer
from cdktn_provider_azurerm.postgresql_flexible_server_database import PostgresqlFlexibleServerDatabase
from cdktn_provider_azurerm.private_dns_zone import PrivateDnsZone
from cdktn_provider_azurerm.private_dns_zone_virtual_network_link import PrivateDnsZoneVirtualNetworkLink
from cdktn_provider_azurerm.provider import AzurermProvider
from cdktn_provider_azurerm.public_ip import PublicIp
from cdktn_provider_azurerm.resource_group import ResourceGroup
from cdktn_provider_azurerm.role_assignment import RoleAssignment
from cdktn_provider_azurerm.storage_account import StorageAccount
from cdktn_provider_azurerm.storage_container import StorageContainer
from cdktn_provider_azurerm.subnet import Subnet
from cdktn_provider_azurerm.subnet_nat_gateway_association import SubnetNatGatewayAssociation
from cdktn_provider_azurerm.subnet_network_security_group_association import SubnetNetworkSecurityGroupAssociation
from cdktn_provider_azurerm.user_assigned_identity import UserAssignedIdentity
from cdktn_provider_azurerm.virtual_network import VirtualNetwork
from cdktn_provider_random.password import Password
from cdktn_provider_random.provider import RandomProvider
from cdktn_provider_random.string_resource import StringResource
from constructs import Construct

from mlops_infra.config import DATABASE_ADMIN, GPU_TAINT_KEY, SERVICE_ACCOUNTS, Environment
from mlops_infra.outputs import MLFLOW_IN_CLUSTER, publish
from mlops_infra.platform import ClusterAccess, PlatformInputs, storage_outputs

# Azure's own application id for AKS's AAD server: kubelogin asks tokens for it.
AKS_AAD_SERVER_APP = "6dae42f8-4368-4678-94ff-3960e28e3630"
# Azure Workload Identity's webhook injects the federated token into pods with this label, whatever their service
# account says; the service accounts carry only the client-id annotation.
WORKLOAD_IDENTITY_POD_LABELS = {"azure.workload.identity/use": "true"}


class AzureEnvironment(TerraformStack):
    def __init__(self, scope: Construct, env: Environment):
        super().__init__(scope, env.stack_id)
        n = env.name
        AzurermProvider(self, "azurerm", features=[{}], storage_use_azuread=True)
        RandomProvider(self, "random")
        client = DataAzurermClientConfig(self, "client")
        suffix = StringResource(self, "suffix", length=6, special=False, upper=False).result
        rg = ResourceGroup(self, "rg", name=f"{n}-rg", location=env.region, tags=env.labels)
        common = {"resource_group_name": rg.name, "location": rg.location, "tags": env.labels}

        # ---- network: nodes and the database in private subnets, NAT for egress, VNet flow logs
        vnet = VirtualNetwork(self, "vnet", name=f"{n}-vnet", address_space=[env.network_cidr], **common)
        nodes = Subnet(self, "nodes", name="nodes", resource_group_name=rg.name, virtual_network_name=vnet.name,
                       address_prefixes=[Fn.cidrsubnet(env.network_cidr, 4, 0)], default_outbound_access_enabled=False,
                       service_endpoint=[{"service": "Microsoft.Storage"}, {"service": "Microsoft.KeyVault"}])
        db_subnet = Subnet(self, "db", name="postgres", resource_group_name=rg.name, virtual_network_name=vnet.name,
                           address_prefixes=[Fn.cidrsubnet(env.network_cidr, 8, 200)], default_outbound_access_enabled=False,
                           delegation=[{"name": "postgres", "serviceDelegation": {
                               "name": "Microsoft.DBforPostgreSQL/flexibleServers",
                               "actions": ["Microsoft.Network/virtualNetworks/subnets/join/action"]}}])
        # Subnet-level NSGs: Azure's default rules (VNet and load balancer in, internet in denied) plus nothing else.
        for name, subnet in (("nodes", nodes), ("postgres", db_subnet)):
            nsg = NetworkSecurityGroup(self, f"nsg-{name}", name=f"{n}-{name}", **common)
            SubnetNetworkSecurityGroupAssociation(self, f"nsg-{name}-assoc", subnet_id=subnet.id,
                                                  network_security_group_id=nsg.id)
        nat_ip = PublicIp(self, "nat-ip", name=f"{n}-nat", allocation_method="Static", sku="Standard",
                          zones=list(env.zones), **common)
        nat = NatGateway(self, "nat", name=f"{n}-nat", sku_name="Standard", **common)
        NatGatewayPublicIpAssociation(self, "nat-ip-assoc", nat_gateway_id=nat.id, public_ip_address_id=nat_ip.id)
        SubnetNatGatewayAssociation(self, "nodes-nat", subnet_id=nodes.id, nat_gateway_id=nat.id)
        logs = LogAnalyticsWorkspace(self, "logs", name=f"{n}-logs", sku="PerGB2018", retention_in_days=90, **common)
        flow_storage = StorageAccount(self, "flow-log-storage", name=f"mlopsflow{env.stage}{suffix}", account_tier="Standard",
                                      account_replication_type="LRS", min_tls_version="TLS1_2",
                                      allow_nested_items_to_be_public=False, shared_access_key_enabled=False,
                                      public_network_access_enabled=False, **common)
        watcher = NetworkWatcher(self, "watcher", name=f"{n}-watcher", **common)
        NetworkWatcherFlowLog(self, "flow-log", name=f"{n}-vnet-flows", network_watcher_name=watcher.name,
                              resource_group_name=rg.name, target_resource_id=vnet.id, storage_account_id=flow_storage.id,
                              enabled=True, version=2, retention_policy={"enabled": True, "days": 90},
                              traffic_analytics={"enabled": True, "workspace_id": logs.workspace_id,
                                                 "workspace_region": rg.location, "workspace_resource_id": logs.id,
                                                 "interval_in_minutes": 10})

        # ---- AKS: Entra ID RBAC, no local accounts, OIDC issuer + workload identity, autoscaler and KEDA
        cluster = KubernetesCluster(
            self, "aks", name=n, dns_prefix=n, kubernetes_version=env.kubernetes_version, sku_tier="Standard" if env.ha_control_plane else "Free",
            private_cluster_enabled=env.private_api_endpoint, local_account_disabled=True,
            oidc_issuer_enabled=True, workload_identity_enabled=True, azure_policy_enabled=True,
            azure_active_directory_role_based_access_control={"azure_rbac_enabled": True, "tenant_id": client.tenant_id},
            default_node_pool={
                "name": "system", "vm_size": env.system_pool.machine_type, "vnet_subnet_id": nodes.id,
                "auto_scaling_enabled": True, "min_count": env.system_pool.min_size, "max_count": env.system_pool.max_size,
                "only_critical_addons_enabled": True, "zones": list(env.zones), "os_disk_type": "Ephemeral",
                "host_encryption_enabled": True, "max_pods": 50, "upgrade_settings": {"max_surge": "33%"}},
            identity={"type": "SystemAssigned"},
            network_profile={"network_plugin": "azure", "network_policy": "cilium", "network_data_plane": "cilium",
                             "outbound_type": "userAssignedNATGateway"},
            workload_autoscaler_profile={"keda_enabled": True},
            # The cluster autoscaler scales the pools ("Manual"), not node auto-provisioning.
            node_provisioning_profile={"mode": "Manual"},
            oms_agent={"log_analytics_workspace_id": logs.id},
            key_vault_secrets_provider={"secret_rotation_enabled": True},
            automatic_upgrade_channel="patch", **common,
        )
        # The system pool takes only critical add-ons (CriticalAddonsOnly taint) and the other two are spot-tainted:
        # the platform's own pods (Dagster, MLflow, KServe, Prometheus, the model servers) need this on-demand pool.
        KubernetesClusterNodePool(
            self, "pool-platform", name="platform", kubernetes_cluster_id=cluster.id, vm_size=env.system_pool.machine_type,
            vnet_subnet_id=nodes.id, mode="User", auto_scaling_enabled=True, min_count=env.system_pool.min_size,
            max_count=env.system_pool.max_size, host_encryption_enabled=True, max_pods=50, zones=list(env.zones),
            os_disk_type="Ephemeral", node_labels={"mlops/pool": "platform"}, upgrade_settings={"max_surge": "33%"},
            tags=env.labels)
        for name, pool in (("training", env.training_pool), ("gpu", env.gpu_pool)):
            KubernetesClusterNodePool(
                self, f"pool-{name}", name=name, kubernetes_cluster_id=cluster.id, vm_size=pool.machine_type,
                vnet_subnet_id=nodes.id, priority="Spot", eviction_policy="Delete", spot_max_price=-1,
                auto_scaling_enabled=True, min_count=pool.min_size, max_count=pool.max_size, node_count=0,
                host_encryption_enabled=True, max_pods=50, zones=list(env.zones),
                node_labels={"mlops/pool": name, "kubernetes.azure.com/scalesetpriority": "spot"},
                node_taints=["kubernetes.azure.com/scalesetpriority=spot:NoSchedule",
                             *([f"{GPU_TAINT_KEY}=true:NoSchedule"] if pool.gpu else [])],
                tags=env.labels,
            )

        # ---- storage: Entra ID only (no shared keys), versioned, never public
        storage = StorageAccount(
            self, "storage", name=f"mlops{env.stage}{suffix}", account_tier="Standard",
            account_replication_type="ZRS" if env.stage == "prod" else "LRS", account_kind="StorageV2", is_hns_enabled=True,
            min_tls_version="TLS1_2", https_traffic_only_enabled=True, allow_nested_items_to_be_public=False,
            shared_access_key_enabled=False, public_network_access_enabled=not env.private_api_endpoint,
            infrastructure_encryption_enabled=True, local_user_enabled=False,
            network_rules={"default_action": "Deny", "bypass": ["AzureServices"], "virtual_network_subnet_ids": [nodes.id]},
            blob_properties={"delete_retention_policy": {"days": env.backup_retention_days},
                             "container_delete_retention_policy": {"days": env.backup_retention_days}},
            **common)
        container = StorageContainer(self, "container", name="mlops", storage_account_id=storage.id,
                                     container_access_type="private")

        # ---- PostgreSQL: delegated subnet + private DNS only, backups, zone-redundant HA in prod
        dns = PrivateDnsZone(self, "pg-dns", name=f"{n}.postgres.database.azure.com", resource_group_name=rg.name)
        link = PrivateDnsZoneVirtualNetworkLink(self, "pg-dns-link", name=f"{n}-pg", private_dns_zone_id=dns.id,
                                                virtual_network_id=vnet.id)
        password = Password(self, "db-password", length=32, special=False)
        db = PostgresqlFlexibleServer(
            self, "postgres", name=f"{n}-pg-{suffix}", version="17", sku_name=env.database_tier,
            storage_mb=env.database_storage_gb * 1024, delegated_subnet_id=db_subnet.id, private_dns_zone_id=dns.id,
            public_network_access_enabled=False, administrator_login=DATABASE_ADMIN, administrator_password=password.result,
            backup_retention_days=min(env.backup_retention_days, 35), geo_redundant_backup_enabled=env.stage == "prod",
            zone="1", high_availability={"mode": "ZoneRedundant", "standby_availability_zone": "2"}
            if env.database_high_availability else None,
            depends_on=[link], **common)
        # The Dagster chart expects its database to exist (the MLflow one is made by a Job in the cluster).
        PostgresqlFlexibleServerDatabase(self, "dagster-db", name="dagster", server_id=db.id, charset="UTF8",
                                         collation="en_US.utf8")

        registry = ContainerRegistry(self, "acr", name=f"mlops{env.stage}{suffix}", sku="Premium", admin_enabled=False,
                                     public_network_access_enabled=not env.private_api_endpoint,
                                     retention_policy_in_days=30, quarantine_policy_enabled=True, data_endpoint_enabled=True,
                                     zone_redundancy_enabled=env.stage == "prod", **common)
        RoleAssignment(self, "aks-pull", scope=registry.id, role_definition_name="AcrPull",
                       principal_id=cluster.kubelet_identity.object_id)
        # Azure RBAC for Kubernetes with local accounts off: the deployer (Terraform's Helm and Kubernetes providers,
        # through kubelogin) is authorized by this role or by nothing.
        RoleAssignment(self, "aks-deployer", scope=cluster.id,
                                       role_definition_name="Azure Kubernetes Service RBAC Cluster Admin",
                                       principal_id=client.object_id)

        # ---- secrets: Key Vault with RBAC, purge protection in prod; External Secrets reads it by workload identity
        vault = KeyVault(self, "vault", name=f"{n}-kv-{suffix}", tenant_id=client.tenant_id, sku_name="standard",
                         rbac_authorization_enabled=True, purge_protection_enabled=env.deletion_protection,
                         soft_delete_retention_days=90, public_network_access_enabled=not env.private_api_endpoint,
                         network_acls={"default_action": "Deny", "bypass": "AzureServices",
                                       "virtual_network_subnet_ids": [nodes.id]}, **common)
        # With RBAC authorization nobody may write a secret until given a role, the deployer included.
        deployer_secrets = RoleAssignment(self, "vault-deployer", scope=vault.id,
                                          role_definition_name="Key Vault Secrets Officer", principal_id=client.object_id)
        KeyVaultSecret(self, "db-password-secret", name=f"{n}-db-password", value=password.result, key_vault_id=vault.id,
                       content_type="password", expiration_date="2099-12-31T00:00:00Z", depends_on=[deployer_secrets])

        def identity(component: str, namespace: str, account: str) -> UserAssignedIdentity:
            """A managed identity federated with exactly one Kubernetes service account: no secrets anywhere."""
            uai = UserAssignedIdentity(self, f"id-{component}", name=f"{n}-{component}", **common)
            FederatedIdentityCredential(self, f"fic-{component}", name=f"{n}-{component}", user_assigned_identity_id=uai.id,
                                        audience=["api://AzureADTokenExchange"], issuer=cluster.oidc_issuer_url,
                                        subject=f"system:serviceaccount:{namespace}:{account}")
            return uai

        identities = {c: identity(c, ns, sa) for c, (ns, sa) in SERVICE_ACCOUNTS.items()}
        for c in identities:
            RoleAssignment(self, f"blob-{c}", scope=storage.id, role_definition_name="Storage Blob Data Contributor",
                           principal_id=identities[c].principal_id)
        secrets_id = identity("external-secrets", "external-secrets", "external-secrets")
        RoleAssignment(self, "vault-reader", scope=vault.id, role_definition_name="Key Vault Secrets User",
                       principal_id=secrets_id.principal_id)

        kube = cluster.kube_config.get(0)
        host, ca = kube.host, kube.cluster_ca_certificate
        lake = f"abfss://{container.name}@{storage.name}.dfs.core.windows.net"
        self.platform_inputs = inputs = PlatformInputs(
            # The deployer's Entra ID token, through kubelogin: local accounts are off. The deployer holds AKS RBAC
            # Cluster Admin (above) by the time the platform stack runs, since this stack is applied first.
            access=lambda stack: ClusterAccess(
                host=host, cluster_ca_certificate=Fn.base64decode(ca), exec_command="kubelogin",
                exec_args=["get-token", "--login", "azurecli", "--server-id", AKS_AAD_SERVER_APP]),
            identity_annotations={c: {"azure.workload.identity/client-id": i.client_id} for c, i in identities.items()},
            pod_identity_labels=WORKLOAD_IDENTITY_POD_LABELS,
            secret_store={"azurekv": {"authType": "WorkloadIdentity", "vaultUrl": vault.vault_uri,
                                      "serviceAccountRef": {"name": "external-secrets", "namespace": "external-secrets"}}},
            database_host=db.fqdn,
            object_root=lake,
            # MLflow's abfss:// client speaks the Data Lake (dfs) API; its wasbs:// client the blob API, which the same
            # account serves and which the emulated run (`make e2e-azure`, on Azurite) can test.
            mlflow_artifact_root=f"wasbs://{container.name}@{storage.name}.blob.core.windows.net/mlflow",
            registry=registry.login_server,
            # AKS taints every spot pool itself: the GPU operator's DaemonSets must tolerate that on the GPU pool.
            gpu_tolerations=[{"key": "kubernetes.azure.com/scalesetpriority", "operator": "Equal", "value": "spot",
                              "effect": "NoSchedule"}],
            # KEDA is AKS's own add-on here (workload_autoscaler_profile): no chart installs a second operator.
            chart_values={"external-secrets": {
                "serviceAccount": {"annotations": {"azure.workload.identity/client-id": secrets_id.client_id}}}},
        )

        publish(self, {
            "cluster_endpoint": kube.host,
            "kubeconfig_command": f"az aks get-credentials --resource-group {n}-rg --name {n} && kubelogin convert-kubeconfig -l azurecli",
            "mlops_bucket": container.name,
            **storage_outputs(env, inputs),
            "dagster_pg_host": db.fqdn,
            "mlflow_tracking_uri": MLFLOW_IN_CLUSTER,
            "registry_url": registry.login_server,
            **{f"identity_{c}": i.client_id for c, i in identities.items()},
        })
