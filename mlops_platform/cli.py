"""`python -m mlops_platform.cli`: seed the landing folder, ask a served model for a prediction, stop the local server."""

from __future__ import annotations

import argparse
import json
import sys

import requests

from mlops_platform.core import data
from mlops_platform.core.spec import ModelSpec, load_specs
from mlops_platform.defs.profiles import load_profile


def _specs(name: str | None) -> list[ModelSpec]:
    specs = load_specs()
    chosen = [s for s in specs if name in (None, s.name)]
    if not chosen:
        sys.exit(f"no model named {name!r}; declared: {[s.name for s in specs]}")
    return chosen


def seed(args: argparse.Namespace) -> None:
    landing = load_profile().resources["landing"]
    for spec in _specs(args.model):
        if landing.list_batches(spec.name) and not args.force:
            print(f"{spec.name}: landing already holds batches; leaving it as it is")
            continue
        for i, batch in enumerate(data.bundled_batches(spec.dataset, args.batches)):
            where = landing.write(spec.name, f"seed-{i:03d}.csv", data.encode_batch(batch))
            print(f"{spec.name}: wrote {len(batch)} rows to {where}")


def predict(args: argparse.Namespace) -> None:
    serving = load_profile().resources["serving"]
    for spec in _specs(args.model):
        rows = data.bundled_batches(spec.dataset, 1)[0].head(args.rows)
        url = f"{serving.base_url}/v1/models/{spec.registered_name}:predict"
        body = {"instances": rows[spec.dataset.features].to_numpy(dtype=float).tolist()}
        response = requests.post(url, json=body, timeout=30)
        version = requests.get(f"{serving.base_url}/v2/models/{spec.registered_name}", timeout=10).json().get("versions")
        print(f"endpoint: {url}  (model version {', '.join(version or [])})")
        print(f"prediction for {len(rows)} rows: {json.dumps(response.json())}  expected: {rows[spec.dataset.target].tolist()}")
        response.raise_for_status()


def stop(_: argparse.Namespace) -> None:
    serving = load_profile().resources["serving"]
    print("stopped the model server" if serving.stop() else "no model server was running")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.cli", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("seed", help="cut the bundled data into landing batches")
    p.add_argument("--model")
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--force", action="store_true", help="write even if landing already holds batches")
    p.set_defaults(handler=seed)
    p = commands.add_parser("predict", help="print the endpoint URL and a prediction from it")
    p.add_argument("--model")
    p.add_argument("--rows", type=int, default=3)
    p.set_defaults(handler=predict)
    commands.add_parser("stop", help="stop the local model server").set_defaults(handler=stop)
    args = parser.parse_args(argv)
    args.handler(args)


if __name__ == "__main__":
    main()
