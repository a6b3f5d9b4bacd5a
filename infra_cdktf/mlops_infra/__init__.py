"""CDK-for-Terraform (CDK Terrain, `cdktn`) app: one environment per cloud and stage, the platform layer on top."""
