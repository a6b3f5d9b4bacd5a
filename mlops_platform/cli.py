"""`python -m mlops_platform.cli`: seed the landing area with bundled demo data, ask a served model for a prediction,
set a bad batch aside, stop the local server.

Every command goes through the same resources and integrations as the assets, under whichever profile
`MLOPS_PROFILE` names; where a profile cannot do something, the command says why and exits non-zero.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from typing import Any

import dagster as dg
import requests

from mlops_platform.core import data
from mlops_platform.core.spec import ModelSpec, load_models
from mlops_platform.defs.profiles import current_profile_name, load_profile
from mlops_platform.integrations.serving import UnsupportedOperation


def _specs(name: str | None) -> list[ModelSpec]:
    loaded = load_models()
    for error in loaded.errors:
        print(f"not loaded: {error}", file=sys.stderr)
    specs = loaded.specs
    chosen = [s for s in specs if name in (None, s.name)]
    if not chosen:
        sys.exit(f"no model named {name!r}; declared: {[s.name for s in specs]}")
    return chosen


def _resource(key: str) -> Any:
    """The profile's resource, with its environment variables resolved as Dagster resolves them for a run."""
    try:
        with dg.build_resources({key: load_profile().resources[key]}) as built:
            return getattr(built, key)
    except dg.DagsterInvalidConfigError as exc:
        missing = sorted(set(re.findall(r'environment variable "(\w+)" which is not set', str(exc))))
        if not missing:
            raise
        raise RuntimeError(f"the {key} resource needs these environment variables: {', '.join(missing)}") from None


def seed(args: argparse.Namespace) -> None:
    landing = _resource("landing").get_store()
    for spec in _specs(args.model):
        if not spec.dataset.bundled:
            print(f"{spec.name}: reads its own data from {spec.dataset.source}; nothing to seed")
            continue
        if landing.list_batches(spec.name) and not args.force:
            print(f"{spec.name}: landing already holds batches; leaving it as it is")
            continue
        for i, batch in enumerate(data.bundled_batches(spec.dataset, args.batches)):
            where = landing.write(spec.name, f"seed-{i:03d}.csv", data.encode_batch(batch))
            print(f"{spec.name}: wrote {len(batch)} rows to {where}")


def sample_rows(spec: ModelSpec, rows: int):
    """A few valid rows of the model's own data (the first batch that validates), typed as training reads them."""
    catalog = _resource("landing").get_catalog(spec)
    for batch in catalog.batches():
        frame, _ = data.validate_batch(batch.name, catalog.read(batch), spec.dataset)
        if frame is not None:
            return frame.head(rows)
    if spec.dataset.bundled:
        frame, _ = data.validate_batch("bundled.csv", data.encode_batch(data.bundled_batches(spec.dataset, 1)[0]), spec.dataset)
        return frame.head(rows)
    raise RuntimeError(f"{spec.name} has no valid batch to take sample rows from")


def predict(args: argparse.Namespace) -> None:
    serving = _resource("serving").get_backend()
    for spec in _specs(args.model):
        rows = sample_rows(spec, args.rows)
        endpoint = serving.endpoint(spec.registered_name)
        response = requests.post(endpoint.v1_predict_url, json={"instances": data.json_rows(rows, spec.dataset)}, timeout=30)
        print(f"endpoint: {endpoint.v1_predict_url}  (model version {endpoint.version})")
        print(f"prediction for {len(rows)} rows: {json.dumps(response.json())}  expected: {rows[spec.dataset.target].tolist()}")
        response.raise_for_status()


def exclude(args: argparse.Namespace) -> None:
    spec = _specs(args.model)[0]
    catalog = _resource("landing").get_catalog(spec)
    try:
        batch = catalog.find(args.batch)
    except KeyError as exc:
        raise RuntimeError(exc.args[0]) from None
    where = catalog.set_aside(batch, args.reason)
    kept = "moved to quarantine" if batch.origin == "landing" else "left in place (it is your file) and noted as excluded"
    print(f"{spec.name}: batch {batch.name} set aside: {kept}: {where}")


def stop(_: argparse.Namespace) -> None:
    serving = _resource("serving").get_backend()
    print("stopped the model server" if serving.stop() else "no model server was running")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("seed", help="cut bundled demo data (sources 'sklearn:NAME') into landing batches")
    p.add_argument("--model")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--force", action="store_true", help="write even if landing already holds batches")
    p.set_defaults(handler=seed)
    p = commands.add_parser("predict", help="print the endpoint URL and a prediction from it")
    p.add_argument("--model")
    p.add_argument("--rows", type=int, default=3)
    p.set_defaults(handler=predict)
    p = commands.add_parser("exclude", help="set a bad batch aside, so training leaves it out; nothing is deleted")
    p.add_argument("--model", required=True)
    p.add_argument("--batch", required=True, help="the batch's file name, as the gate or the landing check names it")
    p.add_argument("--reason", required=True)
    p.set_defaults(handler=exclude)
    commands.add_parser("stop", help="stop the local model server").set_defaults(handler=stop)
    args = parser.parse_args(argv)
    try:
        args.handler(args)
    except (UnsupportedOperation, RuntimeError, requests.RequestException) as exc:
        sys.exit(f"{args.command} under the {current_profile_name()!r} profile: {exc}")


if __name__ == "__main__":
    main()
