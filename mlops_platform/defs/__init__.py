"""Orchestration: Dagster assets, checks, jobs, schedules, sensors and the resources they reach infrastructure through."""
