"""Adapters to the outside world, one module per system: the model registry, landing storage, serving and metrics.

Plain classes behind small abstract interfaces, with no Dagster imports: the Dagster resources in `defs/`, the CLI,
the benchmarks and the tests all build and use the same ones.
"""
