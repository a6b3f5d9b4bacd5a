"""CDK-for-Terraform (CDK Terrain, `cdktn`) app: one environment per cloud and stage, each a cloud stack and the platform stack on top."""
