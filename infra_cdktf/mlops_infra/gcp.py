"""GCP environment: VPC, GKE with node auto-provisioning, GCS, Cloud SQL PostgreSQL, Artifact Registry,
Workload Identity Federation for GKE, Secret Manager; the platform stack goes on top."""

from __future__ import annotations

from cdktn import Fn, TerraformStack, TerraformVariable
from cdktn_provider_google.artifact_registry_repository import ArtifactRegistryRepository
from cdktn_provider_google.compute_firewall import ComputeFirewall
from cdktn_provider_google.compute_global_address import ComputeGlobalAddress
from cdktn_provider_google.compute_network import ComputeNetwork
from cdktn_provider_google.compute_router import ComputeRouter
from cdktn_provider_google.compute_router_nat import ComputeRouterNat
from cdktn_provider_google.compute_subnetwork import ComputeSubnetwork
from cdktn_provider_google.container_cluster import ContainerCluster
from cdktn_provider_google.container_node_pool import ContainerNodePool
from cdktn_provider_google.data_google_client_config import DataGoogleClientConfig
from cdktn_provider_google.data_google_project import DataGoogleProject
from cdktn_provider_google.data_google_storage_project_service_account import DataGoogleStorageProjectServiceAccount
from cdktn_provider_google.kms_crypto_key import KmsCryptoKey
from cdktn_provider_google.kms_crypto_key_iam_member import KmsCryptoKeyIamMember
from cdktn_provider_google.kms_key_ring import KmsKeyRing
from cdktn_provider_google.provider import GoogleProvider
from cdktn_provider_google.secret_manager_secret import SecretManagerSecret
from cdktn_provider_google.secret_manager_secret_iam_member import SecretManagerSecretIamMember
from cdktn_provider_google.secret_manager_secret_version import SecretManagerSecretVersion
from cdktn_provider_google.service_account import ServiceAccount
from cdktn_provider_google.service_account_iam_member import ServiceAccountIamMember
from cdktn_provider_google.service_networking_connection import ServiceNetworkingConnection
from cdktn_provider_google.sql_database import SqlDatabase
from cdktn_provider_google.sql_database_instance import SqlDatabaseInstance
from cdktn_provider_google.sql_user import SqlUser
from cdktn_provider_google.storage_bucket import StorageBucket
from cdktn_provider_google.storage_bucket_iam_member import StorageBucketIamMember
from cdktn_provider_random.password import Password
from cdktn_provider_random.provider import RandomProvider
from constructs import Construct

from mlops_infra.config import DATABASE_ADMIN, GPU_TAINT_KEY, SERVICE_ACCOUNTS, Environment
from mlops_infra.outputs import MLFLOW_IN_CLUSTER, publish
from mlops_infra.platform import ClusterAccess, PlatformInputs, storage_outputs


class GcpEnvironment(TerraformStack):
    def __init__(self, scope: Construct, env: Environment):
        super().__init__(scope, env.stack_id)
        n = env.name
        project = TerraformVariable(self, "project_id", type="string", description="GCP project to deploy into").string_value
        deployer_cidr = None if env.private_api_endpoint else TerraformVariable(
            self, "deployer_cidr", type="string",
            description="the deployer's public address as a CIDR (e.g. 203.0.113.7/32): may reach the cluster API").string_value
        GoogleProvider(self, "google", project=project, region=env.region, default_labels=env.labels)
        RandomProvider(self, "random")

        ring = KmsKeyRing(self, "keyring", name=f"{n}-keys", location=env.region)
        key = KmsCryptoKey(self, "key", name=f"{n}-data", key_ring=ring.id, rotation_period="7776000s",
                           lifecycle={"prevent_destroy": True})  # destroying the key would destroy the data
        # Each service that encrypts with the key does so as its service agent, which needs the key's role first.
        number = DataGoogleProject(self, "project").number
        agents = {
            "storage": f"serviceAccount:{DataGoogleStorageProjectServiceAccount(self, 'gcs-agent').email_address}",
            "sql": f"serviceAccount:service-{number}@gcp-sa-cloud-sql.iam.gserviceaccount.com",
            "registry": f"serviceAccount:service-{number}@gcp-sa-artifactregistry.iam.gserviceaccount.com",
            "gke": f"serviceAccount:service-{number}@container-engine-robot.iam.gserviceaccount.com",
        }
        grants = {agent: KmsCryptoKeyIamMember(self, f"cmek-{agent}", crypto_key_id=key.id,
                                               role="roles/cloudkms.cryptoKeyEncrypterDecrypter", member=member)
                  for agent, member in agents.items()}

        # ---- network: no default subnets, private Google access, flow logs, Cloud NAT for egress
        network = ComputeNetwork(self, "vpc", name=n, auto_create_subnetworks=False)
        subnet = ComputeSubnetwork(
            self, "nodes", name=f"{n}-nodes", network=network.id, region=env.region,
            ip_cidr_range=Fn.cidrsubnet(env.network_cidr, 4, 0), private_ip_google_access=True,
            secondary_ip_range=[{"rangeName": "pods", "ipCidrRange": Fn.cidrsubnet(env.network_cidr, 2, 1)},
                                {"rangeName": "services", "ipCidrRange": Fn.cidrsubnet(env.network_cidr, 6, 4)}],
            log_config={"aggregation_interval": "INTERVAL_5_SEC", "flow_sampling": 0.5, "metadata": "INCLUDE_ALL_METADATA"})
        # Only traffic from inside the VPC and Google's health checkers may reach nodes; the rest is denied.
        ComputeFirewall(self, "allow-internal", name=f"{n}-allow-internal", network=network.id, direction="INGRESS",
                        source_ranges=[env.network_cidr, "172.16.0.0/28"], allow=[{"protocol": "all"}],
                        log_config={"metadata": "INCLUDE_ALL_METADATA"})
        ComputeFirewall(self, "allow-health-checks", name=f"{n}-allow-health-checks", network=network.id,
                        direction="INGRESS", source_ranges=["35.191.0.0/16", "130.211.0.0/22"],
                        allow=[{"protocol": "tcp"}], log_config={"metadata": "INCLUDE_ALL_METADATA"})
        ComputeFirewall(self, "deny-ingress", name=f"{n}-deny-ingress", network=network.id, direction="INGRESS",
                        priority=65534, source_ranges=["0.0.0.0/0"], deny=[{"protocol": "all"}],
                        log_config={"metadata": "INCLUDE_ALL_METADATA"})
        router = ComputeRouter(self, "router", name=f"{n}-router", network=network.id, region=env.region)
        ComputeRouterNat(self, "nat", name=f"{n}-nat", router=router.name, region=env.region,
                         nat_ip_allocate_option="AUTO_ONLY", source_subnetwork_ip_ranges_to_nat="ALL_SUBNETWORKS_ALL_IP_RANGES",
                         log_config={"enable": True, "filter": "ERRORS_ONLY"})

        # ---- GKE: private nodes, regional control plane in prod, Workload Identity, node auto-provisioning
        cluster = ContainerCluster(
            self, "gke", name=n, location=env.region if env.ha_control_plane else env.zones[0],
            network=network.id, subnetwork=subnet.id, remove_default_node_pool=True, initial_node_count=1,
            min_master_version=env.kubernetes_version, release_channel={"channel": "REGULAR"},
            deletion_protection=env.deletion_protection, enable_shielded_nodes=True, datapath_provider="ADVANCED_DATAPATH",
            ip_allocation_policy={"cluster_secondary_range_name": "pods", "services_secondary_range_name": "services"},
            private_cluster_config={"enable_private_nodes": True, "enable_private_endpoint": env.private_api_endpoint,
                                    "master_ipv4_cidr_block": "172.16.0.0/28"},
            # The VPC, and in dev (public endpoint) the deployer's own address: Terraform's Helm and Kubernetes
            # providers must reach the API. Prod's endpoint is private: deploy from inside the VPC.
            master_authorized_networks_config={"cidr_blocks": [
                {"cidrBlock": env.network_cidr, "displayName": "vpc"},
                *([] if env.private_api_endpoint else [{"cidrBlock": deployer_cidr, "displayName": "deployer"}])]},
            depends_on=[grants["gke"]],
            workload_identity_config={"workload_pool": f"{project}.svc.id.goog"},
            database_encryption={"state": "ENCRYPTED", "key_name": key.id},
            gateway_api_config={"channel": "CHANNEL_STANDARD"},
            cluster_autoscaling={
                "enabled": True, "autoscaling_profile": "OPTIMIZE_UTILIZATION",
                "resource_limits": [{"resourceType": "cpu", "maximum": 256}, {"resourceType": "memory", "maximum": 1024},
                                    {"resourceType": env.gpu_accelerator, "maximum": env.gpu_pool.max_size}],
                "auto_provisioning_defaults": {"service_account": "default", "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                                               "management": {"auto_repair": True, "auto_upgrade": True},
                                               "shielded_instance_config": {"enable_secure_boot": True}}},
            node_config={"workload_metadata_config": {"mode": "GKE_METADATA"},
                         "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True}},
            master_auth={"client_certificate_config": {"issue_client_certificate": False}},
            binary_authorization={"evaluation_mode": "PROJECT_SINGLETON_POLICY_ENFORCE"},
            enable_intranode_visibility=True,
            resource_labels=env.labels,
        )
        for name, pool in (("system", env.system_pool), ("training", env.training_pool), ("gpu", env.gpu_pool)):
            node_config: dict = {
                "machine_type": pool.machine_type, "spot": pool.spot, "labels": {"mlops/pool": name},
                "workload_metadata_config": {"mode": "GKE_METADATA"},
                "shielded_instance_config": {"enable_secure_boot": True, "enable_integrity_monitoring": True},
                "oauth_scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            }
            if pool.gpu:
                node_config["guest_accelerator"] = [{"type": env.gpu_accelerator, "count": 1,
                                                     "gpuDriverInstallationConfig": {"gpuDriverVersion": "DEFAULT"}}]
                node_config["taint"] = [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NO_SCHEDULE"}]
            ContainerNodePool(self, f"pool-{name}", name=name, cluster=cluster.id, location=cluster.location,
                              initial_node_count=pool.min_size,
                              autoscaling={"total_min_node_count": pool.min_size, "total_max_node_count": pool.max_size},
                              management={"auto_repair": True, "auto_upgrade": True}, node_config=node_config)

        # ---- storage: uniform access, public access prevented, versioned, CMEK
        bucket = StorageBucket(self, "bucket", name=f"{n}-{project}-data", location=env.region,
                               uniform_bucket_level_access=True, public_access_prevention="enforced",
                               versioning={"enabled": True}, encryption={"default_kms_key_name": key.id},
                               force_destroy=not env.deletion_protection, depends_on=[grants["storage"]],
                               soft_delete_policy={"retention_duration_seconds": env.backup_retention_days * 86400},
                               lifecycle_rule=[{"action": {"type": "Delete"},
                                                "condition": {"daysSinceNoncurrentTime": env.backup_retention_days}}])

        # ---- Cloud SQL: private IP only through service networking, backups + PITR, regional HA in prod
        peering = ComputeGlobalAddress(self, "sql-range", name=f"{n}-sql", purpose="VPC_PEERING", address_type="INTERNAL",
                                       prefix_length=20, network=network.id)
        private_link = ServiceNetworkingConnection(self, "sql-peering", network=network.id,
                                                   service="servicenetworking.googleapis.com",
                                                   reserved_peering_ranges=[peering.name])
        db = SqlDatabaseInstance(
            self, "postgres", name=f"{n}-pg", database_version="POSTGRES_18", region=env.region,
            deletion_protection=env.deletion_protection, encryption_key_name=key.id,
            depends_on=[private_link, grants["sql"]],
            settings={
                "tier": env.database_tier, "disk_size": env.database_storage_gb, "disk_autoresize": True,
                "availability_type": "REGIONAL" if env.database_high_availability else "ZONAL",
                "deletion_protection_enabled": env.deletion_protection,
                "ip_configuration": {"ipv4_enabled": False, "private_network": network.id, "ssl_mode": "ENCRYPTED_ONLY"},
                "backup_configuration": {"enabled": True, "point_in_time_recovery_enabled": True,
                                         "backup_retention_settings": {"retained_backups": env.backup_retention_days}},
                "database_flags": [{"name": "log_checkpoints", "value": "on"}, {"name": "log_connections", "value": "on"},
                                   {"name": "log_disconnections", "value": "on"}, {"name": "log_lock_waits", "value": "on"},
                                   {"name": "log_duration", "value": "on"}, {"name": "log_hostname", "value": "on"},
                                   {"name": "log_min_messages", "value": "error"}, {"name": "log_statement", "value": "ddl"},
                                   {"name": "log_min_error_statement", "value": "error"},
                                   {"name": "cloudsql.enable_pgaudit", "value": "on"},
                                   {"name": "cloudsql.iam_authentication", "value": "on"}],
                "user_labels": env.labels,
            })
        password = Password(self, "db-password", length=32, special=False)
        SqlUser(self, "db-admin", name=DATABASE_ADMIN, instance=db.name, password=password.result)
        for name in ("dagster", "mlflow"):
            SqlDatabase(self, f"db-{name}", name=name, instance=db.name)
        secret = SecretManagerSecret(self, "db-password-secret", secret_id=f"{n}-db-password",
                                     replication={"user_managed": {"replicas": [{"location": env.region}]}})
        SecretManagerSecretVersion(self, "db-password-version", secret=secret.id, secret_data=password.result)

        ArtifactRegistryRepository(self, "registry", repository_id=n, format="DOCKER", location=env.region,
                                              docker_config={"immutable_tags": True}, kms_key_name=key.id,
                                              depends_on=[grants["registry"]])
        registry_url = f"{env.region}-docker.pkg.dev/{project}/{n}"

        def identity(component: str, namespace: str, account: str) -> ServiceAccount:
            """A Google service account that only this Kubernetes service account may impersonate."""
            gsa = ServiceAccount(self, f"gsa-{component}", account_id=f"{n}-{component}"[:30], display_name=f"{n} {component}")
            ServiceAccountIamMember(self, f"wi-{component}", service_account_id=gsa.name, role="roles/iam.workloadIdentityUser",
                                    member=f"serviceAccount:{project}.svc.id.goog[{namespace}/{account}]")
            return gsa

        identities = {c: identity(c, ns, sa) for c, (ns, sa) in SERVICE_ACCOUNTS.items()}
        for c, gsa in identities.items():
            StorageBucketIamMember(self, f"bucket-{c}", bucket=bucket.name, role="roles/storage.objectUser",
                                   member=f"serviceAccount:{gsa.email}")
        secrets_id = identity("external-secrets", "external-secrets", "external-secrets")
        SecretManagerSecretIamMember(self, "secret-reader", secret_id=secret.id, role="roles/secretmanager.secretAccessor",
                                     member=f"serviceAccount:{secrets_id.email}")

        endpoint, ca = cluster.endpoint, cluster.master_auth.cluster_ca_certificate

        def access(stack: Construct) -> ClusterAccess:
            """The deployer's own OAuth token, read in the platform stack at apply time: from this stack's state it
            would be an hour old at best."""
            GoogleProvider(stack, "google")
            return ClusterAccess(host=f"https://{endpoint}", cluster_ca_certificate=Fn.base64decode(ca),
                                 token=DataGoogleClientConfig(stack, "client").access_token)

        self.platform_inputs = inputs = PlatformInputs(
            access=access,
            identity_annotations={c: {"iam.gke.io/gcp-service-account": g.email} for c, g in identities.items()},
            secret_store={"gcpsm": {"projectID": project}},
            database_host=db.private_ip_address,
            object_root=f"gs://{bucket.name}",
            registry=registry_url,
            chart_values={"external-secrets": {
                "serviceAccount": {"annotations": {"iam.gke.io/gcp-service-account": secrets_id.email}}}},
        )

        publish(self, {
            "cluster_endpoint": f"https://{cluster.endpoint}",
            "kubeconfig_command": f"gcloud container clusters get-credentials {n} --location {cluster.location} --project {project}",
            "mlops_bucket": bucket.name,
            **storage_outputs(env, inputs),
            "dagster_pg_host": db.private_ip_address,
            "mlflow_tracking_uri": MLFLOW_IN_CLUSTER,
            "registry_url": registry_url,
            **{f"identity_{c}": g.email for c, g in identities.items()},
        })
