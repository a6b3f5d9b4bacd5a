"""AWS environment: VPC, EKS with Karpenter, S3, RDS PostgreSQL, ECR, IRSA, SSM Parameter Store; then the platform
stack on top (`mlops_infra.platform`)."""

from __future__ import annotations

import json

from cdktn import Fn, TerraformLocal, TerraformStack
from cdktn_provider_aws.cloudwatch_log_group import CloudwatchLogGroup
from cdktn_provider_aws.data_aws_caller_identity import DataAwsCallerIdentity
from cdktn_provider_aws.data_aws_iam_policy_document import DataAwsIamPolicyDocument
from cdktn_provider_aws.db_instance import DbInstance
from cdktn_provider_aws.db_parameter_group import DbParameterGroup
from cdktn_provider_aws.db_subnet_group import DbSubnetGroup
from cdktn_provider_aws.default_security_group import DefaultSecurityGroup
from cdktn_provider_aws.ecr_repository import EcrRepository
from cdktn_provider_aws.eip import Eip
from cdktn_provider_aws.eks_addon import EksAddon
from cdktn_provider_aws.eks_cluster import EksCluster
from cdktn_provider_aws.eks_node_group import EksNodeGroup
from cdktn_provider_aws.flow_log import FlowLog
from cdktn_provider_aws.iam_instance_profile import IamInstanceProfile
from cdktn_provider_aws.iam_openid_connect_provider import IamOpenidConnectProvider
from cdktn_provider_aws.iam_role import IamRole
from cdktn_provider_aws.iam_role_policy import IamRolePolicy
from cdktn_provider_aws.iam_role_policy_attachment import IamRolePolicyAttachment
from cdktn_provider_aws.internet_gateway import InternetGateway
from cdktn_provider_aws.kms_key import KmsKey
from cdktn_provider_aws.nat_gateway import NatGateway
from cdktn_provider_aws.provider import AwsProvider
from cdktn_provider_aws.route_table import RouteTable
from cdktn_provider_aws.route_table_association import RouteTableAssociation
from cdktn_provider_aws.s3_bucket import S3Bucket
from cdktn_provider_aws.s3_bucket_lifecycle_configuration import S3BucketLifecycleConfiguration
from cdktn_provider_aws.s3_bucket_ownership_controls import S3BucketOwnershipControls
from cdktn_provider_aws.s3_bucket_policy import S3BucketPolicy
from cdktn_provider_aws.s3_bucket_public_access_block import S3BucketPublicAccessBlock
from cdktn_provider_aws.s3_bucket_server_side_encryption_configuration import (
    S3BucketServerSideEncryptionConfigurationA,
)
from cdktn_provider_aws.s3_bucket_versioning import S3BucketVersioningA
from cdktn_provider_aws.security_group import SecurityGroup
from cdktn_provider_aws.ssm_parameter import SsmParameter
from cdktn_provider_aws.subnet import Subnet
from cdktn_provider_aws.vpc import Vpc
from cdktn_provider_random.password import Password
from cdktn_provider_random.provider import RandomProvider
from constructs import Construct

from mlops_infra.config import DATABASE_ADMIN, GPU_TAINT_KEY, SERVICE_ACCOUNTS, Environment
from mlops_infra.outputs import MLFLOW_IN_CLUSTER, publish
from mlops_infra.platform import ClusterAccess, ExtraRelease, PlatformInputs, storage_outputs

# Inside lists, jsii builds structs from camelCase maps (snake_case keys there are dropped silently); a struct passed
# directly takes Python's snake_case keywords.
NODE_POLICIES = ["AmazonEKSWorkerNodePolicy", "AmazonEKS_CNI_Policy", "AmazonEC2ContainerRegistryReadOnly",
                 "AmazonSSMManagedInstanceCore"]


def _assume(service: str) -> str:
    return json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]})


class AwsEnvironment(TerraformStack):
    def __init__(self, scope: Construct, env: Environment):
        super().__init__(scope, env.stack_id)
        n = env.name
        AwsProvider(self, "aws", region=env.region, default_tags=[{"tags": env.labels}])
        RandomProvider(self, "random")
        account = DataAwsCallerIdentity(self, "account").account_id
        key = KmsKey(self, "key", description=f"{n} encryption", enable_key_rotation=True, deletion_window_in_days=30,
                     policy=json.dumps({"Version": "2012-10-17", "Statement": [
                         {"Sid": "AccountAdmin", "Effect": "Allow", "Principal": {"AWS": f"arn:aws:iam::{account}:root"},
                          "Action": "kms:*", "Resource": "*"},
                         {"Sid": "CloudWatchLogs", "Effect": "Allow",
                          "Principal": {"Service": f"logs.{env.region}.amazonaws.com"},
                          "Action": ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*",
                                     "kms:Describe*"], "Resource": "*"}]}))

        # ---- network: private subnets for everything, NAT for egress (one per AZ in prod), flow logs
        vpc = Vpc(self, "vpc", cidr_block=env.network_cidr, enable_dns_hostnames=True, enable_dns_support=True,
                  tags={"Name": n})
        DefaultSecurityGroup(self, "default-sg", vpc_id=vpc.id)  # no rules: nothing uses the default group
        igw = InternetGateway(self, "igw", vpc_id=vpc.id)
        private, public = [], []
        for i, zone in enumerate(env.zones):
            public.append(Subnet(self, f"public-{i}", vpc_id=vpc.id, availability_zone=zone,
                                 cidr_block=Fn.cidrsubnet(env.network_cidr, 8, i),
                                 tags={"Name": f"{n}-public-{zone}", "kubernetes.io/role/elb": "1"}))
            private.append(Subnet(self, f"private-{i}", vpc_id=vpc.id, availability_zone=zone,
                                  cidr_block=Fn.cidrsubnet(env.network_cidr, 4, i + 1),
                                  tags={"Name": f"{n}-private-{zone}", "kubernetes.io/role/internal-elb": "1",
                                        "karpenter.sh/discovery": n}))
        public_rt = RouteTable(self, "public-rt", vpc_id=vpc.id, route=[{"cidrBlock": "0.0.0.0/0", "gatewayId": igw.id}])
        nat_count = len(env.zones) if env.ha_control_plane else 1
        nats = [NatGateway(self, f"nat-{i}", subnet_id=public[i].id, allocation_id=Eip(self, f"nat-ip-{i}", domain="vpc").id)
                for i in range(nat_count)]
        for i, subnet in enumerate(public):
            RouteTableAssociation(self, f"public-rta-{i}", subnet_id=subnet.id, route_table_id=public_rt.id)
        for i, subnet in enumerate(private):
            rt = RouteTable(self, f"private-rt-{i}", vpc_id=vpc.id,
                            route=[{"cidrBlock": "0.0.0.0/0", "natGatewayId": nats[i % nat_count].id}])
            RouteTableAssociation(self, f"private-rta-{i}", subnet_id=subnet.id, route_table_id=rt.id)
        flow_logs = CloudwatchLogGroup(self, "flow-logs", name=f"/{n}/vpc-flow-logs", retention_in_days=365,
                                       kms_key_id=key.arn)
        flow_role = IamRole(self, "flow-logs-role", name=f"{n}-flow-logs", assume_role_policy=_assume("vpc-flow-logs.amazonaws.com"))
        IamRolePolicy(self, "flow-logs-policy", role=flow_role.id, policy=json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
             "Resource": f"{flow_logs.arn}:*"}]}))
        FlowLog(self, "flow-log", vpc_id=vpc.id, traffic_type="ALL", log_destination=flow_logs.arn, iam_role_arn=flow_role.arn)

        # ---- EKS: private endpoint always, public endpoint only in dev; secrets encrypted with our key
        cluster_role = IamRole(self, "cluster-role", name=f"{n}-eks", assume_role_policy=_assume("eks.amazonaws.com"))
        IamRolePolicyAttachment(self, "cluster-policy", role=cluster_role.name,
                                policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy")
        cluster = EksCluster(
            self, "eks", name=n, role_arn=cluster_role.arn, version=env.kubernetes_version,
            vpc_config={"subnet_ids": [s.id for s in private], "endpoint_private_access": True,
                        "endpoint_public_access": not env.private_api_endpoint},
            encryption_config={"provider": {"key_arn": key.arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=["api", "audit", "authenticator", "controllerManager", "scheduler"],
            access_config={"authentication_mode": "API"},
            deletion_protection=env.deletion_protection,
        )
        node_role = IamRole(self, "node-role", name=f"{n}-nodes", assume_role_policy=_assume("ec2.amazonaws.com"))
        for policy in NODE_POLICIES:
            IamRolePolicyAttachment(self, f"node-{policy}", role=node_role.name, policy_arn=f"arn:aws:iam::aws:policy/{policy}")
        IamInstanceProfile(self, "karpenter-node-profile", name=f"{n}-karpenter-nodes", role=node_role.name)
        pool = env.system_pool
        EksNodeGroup(self, "system-nodes", cluster_name=cluster.name, node_group_name="system", node_role_arn=node_role.arn,
                     subnet_ids=[s.id for s in private], capacity_type="ON_DEMAND", instance_types=[pool.machine_type],
                     scaling_config={"min_size": pool.min_size, "max_size": pool.max_size, "desired_size": pool.min_size},
                     labels={"mlops/pool": "system"}, update_config={"max_unavailable": 1})

        oidc = IamOpenidConnectProvider(self, "oidc", url=cluster.identity.get(0).oidc.get(0).issuer,
                                        client_id_list=["sts.amazonaws.com"])
        issuer = Fn.replace(cluster.identity.get(0).oidc.get(0).issuer, "https://", "")

        def irsa(component: str, namespace: str, account_name: str, statements: list[dict],
                 managed_policies: tuple[str, ...] = ()) -> IamRole:
            """An IAM role only that Kubernetes service account can assume, through the cluster's OIDC issuer."""
            # A policy document, not jsonencode: the condition keys are built from the issuer, which Terraform
            # only knows at apply time, and map keys cannot be expressions.
            trust = DataAwsIamPolicyDocument(self, f"irsa-{component}-trust", statement=[{
                "actions": ["sts:AssumeRoleWithWebIdentity"],
                "principals": [{"type": "Federated", "identifiers": [oidc.arn]}],
                "condition": [
                    {"test": "StringEquals", "variable": f"{issuer}:sub",
                     "values": [f"system:serviceaccount:{namespace}:{account_name}"]},
                    {"test": "StringEquals", "variable": f"{issuer}:aud", "values": ["sts.amazonaws.com"]}]}])
            role = IamRole(self, f"irsa-{component}", name=f"{n}-{component}", assume_role_policy=trust.json)
            if statements:
                IamRolePolicy(self, f"irsa-{component}-policy", role=role.id,
                              policy=Fn.jsonencode({"Version": "2012-10-17", "Statement": statements}))
            for policy in managed_policies:
                IamRolePolicyAttachment(self, f"irsa-{component}-{policy}", role=role.name,
                                        policy_arn=f"arn:aws:iam::aws:policy/service-role/{policy}")
            return role

        # ---- storage: one encrypted, versioned, private bucket for Dagster IO, MLflow artifacts, landing, quarantine
        bucket = S3Bucket(self, "bucket", bucket_prefix=f"{n}-data-", force_destroy=not env.deletion_protection)
        S3BucketVersioningA(self, "bucket-versioning", bucket=bucket.id, versioning_configuration={"status": "Enabled"})
        S3BucketServerSideEncryptionConfigurationA(self, "bucket-encryption", bucket=bucket.id, rule=[{
            "applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms", "kmsMasterKeyId": key.arn},
            "bucketKeyEnabled": True}])
        S3BucketPublicAccessBlock(self, "bucket-private", bucket=bucket.id, block_public_acls=True, block_public_policy=True,
                                  ignore_public_acls=True, restrict_public_buckets=True)
        S3BucketOwnershipControls(self, "bucket-ownership", bucket=bucket.id, rule={"object_ownership": "BucketOwnerEnforced"})
        S3BucketLifecycleConfiguration(self, "bucket-lifecycle", bucket=bucket.id, rule=[{
            "id": "tidy", "status": "Enabled", "filter": [{}],
            "abortIncompleteMultipartUpload": [{"daysAfterInitiation": 7}],
            "noncurrentVersionExpiration": [{"noncurrentDays": env.backup_retention_days}]}])
        S3BucketPolicy(self, "bucket-tls-only", bucket=bucket.id, policy=Fn.jsonencode({"Version": "2012-10-17", "Statement": [{
            "Sid": "DenyInsecureTransport", "Effect": "Deny", "Principal": "*", "Action": "s3:*",
            "Resource": [bucket.arn, f"{bucket.arn}/*"], "Condition": {"Bool": {"aws:SecureTransport": "false"}}}]}))

        # ---- PostgreSQL: private subnets only, encrypted, IAM auth, backups; HA and protection in prod
        password = Password(self, "db-password", length=32, special=False)
        SsmParameter(self, "db-password-param", name=f"{n}-db-password", type="SecureString", key_id=key.arn,
                     value=password.result)
        db_sg = SecurityGroup(self, "db-sg", name=f"{n}-postgres", vpc_id=vpc.id, description="PostgreSQL from the VPC only",
                              ingress=[{"description": "PostgreSQL from the VPC", "fromPort": 5432, "toPort": 5432,
                                        "protocol": "tcp", "cidrBlocks": [env.network_cidr]}],
                              egress=[{"description": "responses within the VPC", "fromPort": 0, "toPort": 0,
                                       "protocol": "-1", "cidrBlocks": [env.network_cidr]}])
        subnets = DbSubnetGroup(self, "db-subnets", name=f"{n}-postgres", subnet_ids=[s.id for s in private])
        params = DbParameterGroup(self, "db-params", name=f"{n}-postgres17", family="postgres17",
                                  parameter=[{"name": "rds.force_ssl", "value": "1"},
                                             {"name": "log_min_duration_statement", "value": "1000"}])
        monitoring = IamRole(self, "db-monitoring", name=f"{n}-rds-monitoring", assume_role_policy=_assume("monitoring.rds.amazonaws.com"))
        IamRolePolicyAttachment(self, "db-monitoring-policy", role=monitoring.name,
                                policy_arn="arn:aws:iam::aws:policy/service-role/AmazonRDSEnhancedMonitoringRole")
        db = DbInstance(
            self, "postgres", identifier=f"{n}-postgres", engine="postgres", engine_version="17",
            instance_class=env.database_tier, allocated_storage=env.database_storage_gb,
            max_allocated_storage=env.database_storage_gb * 4, storage_type="gp3", storage_encrypted=True, kms_key_id=key.arn,
            db_name="dagster", username=DATABASE_ADMIN, password=password.result,
            db_subnet_group_name=subnets.name, vpc_security_group_ids=[db_sg.id], parameter_group_name=params.name,
            publicly_accessible=False, multi_az=env.database_high_availability,
            deletion_protection=env.deletion_protection, backup_retention_period=env.backup_retention_days,
            copy_tags_to_snapshot=True, iam_database_authentication_enabled=True, auto_minor_version_upgrade=True,
            performance_insights_enabled=True, performance_insights_kms_key_id=key.arn,
            monitoring_interval=60, monitoring_role_arn=monitoring.arn,
            enabled_cloudwatch_logs_exports=["postgresql", "upgrade"],
            skip_final_snapshot=not env.deletion_protection,
            final_snapshot_identifier=f"{n}-postgres-final" if env.deletion_protection else None,
        )

        registries = {name: EcrRepository(self, f"ecr-{name}", name=f"{n}/{name}", image_tag_mutability="IMMUTABLE",
                                          image_scanning_configuration={"scan_on_push": True},
                                          encryption_configuration=[{"encryptionType": "KMS", "kmsKey": key.arn}],
                                          force_delete=not env.deletion_protection)
                      for name in ("mlops-serving", "mlops-dagster", "mlops-mlflow")}
        # A local, so the Helm values (JSON) hold a plain reference rather than an expression with quotes in it.
        # The registry prefix with the repositories' own path (`ACCOUNT.dkr.ecr.REGION.amazonaws.com/mlops-dev`), so that
        # `{registry}/mlops-serving` names the repository above.
        registry = TerraformLocal(self, "registry", Fn.replace(registries["mlops-serving"].repository_url, "/mlops-serving", "")).as_string

        bucket_rw = [{"Effect": "Allow", "Action": ["s3:ListBucket"], "Resource": [bucket.arn]},
                     {"Effect": "Allow", "Action": ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], "Resource": [f"{bucket.arn}/*"]},
                     {"Effect": "Allow", "Action": ["kms:Decrypt", "kms:GenerateDataKey"], "Resource": [key.arn]}]
        roles = {component: irsa(component, ns, sa, bucket_rw) for component, (ns, sa) in SERVICE_ACCOUNTS.items()}
        secrets_role = irsa("external-secrets", "external-secrets", "external-secrets", [
            {"Effect": "Allow", "Action": ["ssm:GetParameter", "ssm:GetParameters"],
             "Resource": [f"arn:aws:ssm:{env.region}:{account}:parameter/{n}-*"]},
            {"Effect": "Allow", "Action": ["kms:Decrypt"], "Resource": [key.arn]}])
        karpenter_role = irsa("karpenter", "karpenter", "karpenter", [
            {"Effect": "Allow", "Action": ["ec2:CreateFleet", "ec2:CreateLaunchTemplate", "ec2:CreateTags", "ec2:Describe*",
                                           "ec2:DeleteLaunchTemplate", "ec2:RunInstances", "ec2:TerminateInstances",
                                           "pricing:GetProducts", "ssm:GetParameter", "eks:DescribeCluster",
                                           "iam:GetInstanceProfile", "iam:CreateInstanceProfile", "iam:TagInstanceProfile",
                                           "iam:AddRoleToInstanceProfile", "iam:RemoveRoleFromInstanceProfile",
                                           "iam:DeleteInstanceProfile"], "Resource": "*"},
            {"Effect": "Allow", "Action": "iam:PassRole", "Resource": node_role.arn}])

        # EKS has no CSI driver for EBS until this add-on: Prometheus's volume (and any PVC) would stay Pending.
        ebs_role = irsa("ebs-csi", "kube-system", "ebs-csi-controller-sa", [],
                        managed_policies=("AmazonEBSCSIDriverPolicy",))
        EksAddon(self, "ebs-csi", cluster_name=cluster.name, addon_name="aws-ebs-csi-driver",
                 service_account_role_arn=ebs_role.arn, resolve_conflicts_on_create="OVERWRITE")

        endpoint, ca = cluster.endpoint, cluster.certificate_authority.get(0).data
        self.platform_inputs = inputs = PlatformInputs(
            access=lambda stack: ClusterAccess(
                host=endpoint, cluster_ca_certificate=Fn.base64decode(ca),
                exec_command="aws", exec_args=["eks", "get-token", "--cluster-name", n, "--region", env.region]),
            identity_annotations={c: {"eks.amazonaws.com/role-arn": r.arn} for c, r in roles.items()},
            secret_store={"aws": {"service": "ParameterStore", "region": env.region,
                                  "auth": {"jwt": {"serviceAccountRef": {"name": "external-secrets", "namespace": "external-secrets"}}}}},
            database_host=db.address,
            object_root=f"s3://{bucket.bucket}",
            sdk_env={"AWS_REGION": env.region},
            registry=registry,
            extra_releases=[
                ExtraRelease("karpenter", {
                    "settings": {"clusterName": n, "clusterEndpoint": endpoint},
                    "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": karpenter_role.arn}},
                    "controller": {"resources": {"requests": {"cpu": "250m", "memory": "512Mi"}}},
                }),
                # The NodePools once Karpenter's chart (and with it its CRDs) is in: applied before, they would be refused.
                ExtraRelease("karpenter-pools", {"resources": karpenter_pools(env, node_role.name)}, chart="raw",
                             name="karpenter-node-pools", after=("karpenter",)),
            ],
            chart_values={"external-secrets": {
                "serviceAccount": {"annotations": {"eks.amazonaws.com/role-arn": secrets_role.arn}}}},
        )

        publish(self, {
            "cluster_endpoint": cluster.endpoint,
            "kubeconfig_command": f"aws eks update-kubeconfig --name {n} --region {env.region}",
            "mlops_bucket": bucket.bucket,
            **storage_outputs(env, inputs),
            "dagster_pg_host": db.address,
            "mlflow_tracking_uri": MLFLOW_IN_CLUSTER,
            "registry_url": registry,
            **{f"identity_{c}": r.arn for c, r in roles.items()},
        })


def karpenter_pools(env: Environment, node_role: str) -> list[dict]:
    """Karpenter's EC2NodeClass and NodePools: training on spot, GPU on spot with the GPU taint; both scale to zero."""
    def pool(name: str, machine: str, limit_cpu: int, gpu: bool) -> dict:
        template: dict = {
            "metadata": {"labels": {"mlops/pool": name}},
            "spec": {"nodeClassRef": {"group": "karpenter.k8s.aws", "kind": "EC2NodeClass", "name": "default"},
                     "requirements": [
                         {"key": "karpenter.sh/capacity-type", "operator": "In", "values": ["spot"]},
                         {"key": "node.kubernetes.io/instance-type", "operator": "In", "values": [machine]}],
                     "expireAfter": "168h"}}
        if gpu:
            template["spec"]["taints"] = [{"key": GPU_TAINT_KEY, "value": "true", "effect": "NoSchedule"}]
        return {"apiVersion": "karpenter.sh/v1", "kind": "NodePool", "metadata": {"name": name},
                "spec": {"template": template, "limits": {"cpu": str(limit_cpu)},
                         "disruption": {"consolidationPolicy": "WhenEmptyOrUnderutilized", "consolidateAfter": "5m"}}}

    node_class = {"apiVersion": "karpenter.k8s.aws/v1", "kind": "EC2NodeClass", "metadata": {"name": "default"},
                  "spec": {"role": node_role, "amiSelectorTerms": [{"alias": "al2023@latest"}],
                           "subnetSelectorTerms": [{"tags": {"karpenter.sh/discovery": env.name}}],
                           "securityGroupSelectorTerms": [{"tags": {"aws:eks:cluster-name": env.name}}],
                           "metadataOptions": {"httpTokens": "required"},
                           "blockDeviceMappings": [{"deviceName": "/dev/xvda",
                                                    "ebs": {"volumeSize": "100Gi", "volumeType": "gp3", "encrypted": True}}]}}
    return [node_class,
            pool("training", env.training_pool.machine_type, env.training_pool.max_size * 8, gpu=False),
            pool("gpu", env.gpu_pool.machine_type, env.gpu_pool.max_size * 4, gpu=True)]
