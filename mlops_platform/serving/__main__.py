"""`python -m mlops_platform.serving`: run the model server in the foreground.

The command line extends kserve's own argument parser, as kserve's model servers do, so kserve's flags
(`--http_port`, `--timeout_keep_alive`, …) keep their meaning, and the platform adds its own.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from kserve import model_server

from mlops_platform.core.canary import Revision


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.serving", description=__doc__,
                                     parents=[model_server.parser])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=None, help="the HTTP port (kserve's --http_port)")
    parser.add_argument("--grpc-port", type=int, default=None,
                        help="serve the Open Inference Protocol over gRPC on this port, on the same host; off without it")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--registry-uri", default=None)
    parser.add_argument("--max-body-bytes", type=int, default=None)
    parser.add_argument("--max-rows", type=int, default=None, help="rows one request may carry (more is a 413)")
    parser.add_argument("--routing-file", default=None, help="where the stable/canary routing is persisted")
    parser.add_argument("--control-token-file", default=None,
                        help="bearer token that routing and repository changes need; without it they are switched off")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=VERSION",
                        help="serve this registered version (in a cluster, one predictor pod per revision)")
    parser.add_argument("--model-dir", default=None, metavar="DIR",
                        help="the one --model's MLflow model, already downloaded (KServe's storage initializer puts "
                             "STORAGE_URI in /mnt/models); loaded from here, its metadata still from the registry")
    parser.add_argument("--batching", default=None, metavar="JSON",
                        help="batching of the --model endpoints, e.g. '{\"max_batch_rows\": 64}'; off without it")
    parser.add_argument("--capture-uri", default=None,
                        help="where sampled requests (inputs, predictions, request ids) and feedback are written as "
                             "Parquet (any fsspec location); capture is off without it")
    parser.add_argument("--capture-rate", type=float, default=None,
                        help="share of the --model endpoints' requests to capture")
    parser.add_argument("--capture-queue-rows", type=int, default=100_000,
                        help="captured rows held in memory at most; past it new rows are dropped and counted")
    parser.add_argument("--revision", default=Revision.STABLE, choices=list(Revision), type=Revision,
                        help="the revision label this server's requests carry in its metrics")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    _configure_logging()

    import warnings

    import mlflow
    import sklearn

    from mlops_platform.serving.api import (
        DEFAULT_MAX_BODY_BYTES,
        install_monitoring_api,
        install_request_guards,
        install_routing_api,
    )
    from mlops_platform.serving.batching import BatchSettings
    from mlops_platform.serving.repository import EndpointRepository
    from mlops_platform.serving.routing import Routing
    from mlops_platform.serving.server import PlatformModelServer

    # kserve answers with FastAPI's deprecated ORJSONResponse; the warning would be printed for every request.
    warnings.filterwarnings("ignore", message="ORJSONResponse is deprecated")

    # `models:/` URIs resolve through MLflow's global registry setting, not through a client's.
    mlflow.set_tracking_uri(args.tracking_uri)
    mlflow.set_registry_uri(args.registry_uri or args.tracking_uri)

    # Requests are validated by the protocol layer (numbers only, right width); skip sklearn's per-call re-checks.
    sklearn.set_config(assume_finite=True, skip_parameter_validation=True)
    from mlops_platform.serving.capture import CaptureWriter
    from mlops_platform.serving.protocol import DEFAULT_MAX_ROWS

    capture = CaptureWriter(args.capture_uri, max_queue_rows=args.capture_queue_rows) if args.capture_uri else None
    repository = EndpointRepository(args.tracking_uri, args.registry_uri, args.routing_file, revision_label=args.revision,
                                    max_rows=args.max_rows or DEFAULT_MAX_ROWS, capture=capture)
    if args.model_dir:
        if len(args.model) != 1:
            raise SystemExit("--model-dir holds one model: give exactly one --model NAME=VERSION with it")
        name, _, version = args.model[0].partition("=")
        repository.preload(name, version, args.model_dir)
    if args.model:
        batching = BatchSettings.from_spec(json.loads(args.batching)) if args.batching else None
        for pinned in args.model:
            name, _, version = pinned.partition("=")
            repository.apply(name, Routing(stable=version, batching=batching, capture_rate=args.capture_rate or 0.0))
    else:
        repository.restore()
    repository.watch_leases()
    token = Path(args.control_token_file).read_text().strip() if args.control_token_file else None
    install_request_guards(model_server.app, repository, args.max_body_bytes or DEFAULT_MAX_BODY_BYTES, control_token=token)
    install_routing_api(model_server.app, repository)
    install_monitoring_api(model_server.app, repository)
    try:
        import uvloop

        # kserve starts its servers with asyncio.run(), so uvicorn's own loop choice never applies; choose here.
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.set_event_loop(asyncio.new_event_loop())  # kserve asks for the current loop before it runs one
    except ImportError:
        pass
    server = PlatformModelServer(args.host, repository, grpc_port=args.grpc_port, http_port=args.port or args.http_port,
                                 enable_latency_logging=False, timeout_keep_alive=args.timeout_keep_alive)
    server.start()


def _configure_logging() -> None:
    """KServe's log format for KServe, uvicorn and the platform's own loggers, set explicitly: whatever an import
    configured before (some add a root handler) must not silence the server's log."""
    import copy
    import logging.config

    from kserve.logging import KSERVE_LOG_CONFIG

    config = copy.deepcopy(KSERVE_LOG_CONFIG)
    config["loggers"]["mlops_platform"] = {"handlers": ["kserve"], "level": "INFO", "propagate": False}
    logging.config.dictConfig(config)


if __name__ == "__main__":
    main()
