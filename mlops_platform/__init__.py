"""Dagster-orchestrated ML asset platform: declare a model once, get its whole life cycle."""
