"""`python -m mlops_platform.serving`: run the model server in the foreground."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.serving", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--registry-uri", default=None)
    parser.add_argument("--max-body-bytes", type=int, default=None)
    args = parser.parse_args(argv)
    # kserve parses sys.argv when it is imported; it must not see our flags.
    sys.argv = sys.argv[:1]

    from kserve.model_server import app

    from mlops_platform.serving.runtime import (
        DEFAULT_MAX_BODY_BYTES,
        ChampionRepository,
        LoopbackModelServer,
        install_request_guards,
    )

    repository = ChampionRepository(args.tracking_uri, args.registry_uri)
    repository.load_champions()
    install_request_guards(app, args.max_body_bytes or DEFAULT_MAX_BODY_BYTES)
    server = LoopbackModelServer(args.host, repository, http_port=args.port, enable_latency_logging=False)
    server.start(list(repository.get_models().values()))


if __name__ == "__main__":
    main()
