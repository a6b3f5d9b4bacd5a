"""Upstream schemas, kept byte for byte as their projects publish them (gzip-compressed), never edited here.

Each file names its project and version; SOURCES says where it was taken from. Tests validate the objects the
platform generates against these, with the API server's strict field validation (`kubectl --validate=strict`):
a field the schema does not know is an error, not silently pruned.
"""

from __future__ import annotations

import gzip
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent

SOURCES = {
    "kserve-v0.20.0-serving.kserve.io_inferenceservices.yaml.gz":
        "https://github.com/kserve/kserve/blob/v0.20.0/charts/kserve-crd/templates/serving.kserve.io_inferenceservices.yaml"
        " (tag v0.20.0, commit 1fb781055dd1567164358233e1125142ca6ef1fe)",
}


def read(name: str) -> Any:
    if name not in SOURCES:
        raise KeyError(f"{name} is not a recorded upstream file; add it to SOURCES with its URL and version")
    with gzip.open(HERE / name, "rt") as fh:
        return yaml.safe_load(fh)


def strict(schema: Any) -> Any:
    """An OpenAPI v3 schema as the API server applies it with strict field validation: objects that list their
    properties accept no others, unless the schema preserves unknown fields."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@cache
def crd_schema(name: str, version: str) -> dict:
    """The strict JSON schema of one served version of a CustomResourceDefinition."""
    crd = read(name)
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == version]
    return strict(served["schema"]["openAPIV3Schema"])


@cache
def crd_validator(name: str, version: str):
    """A validator for `crd_schema`, built once: checking a CRD's schema itself takes seconds."""
    import jsonschema

    return jsonschema.Draft202012Validator(crd_schema(name, version))
