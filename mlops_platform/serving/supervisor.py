"""`python -m mlops_platform.serving.supervisor --state-dir DIR -- SERVER ARGS...`: keeps the model server running.

The supervisor imports the runtime's heavy modules once (KServe, MLflow, scikit-learn, torch: seconds of CPU) and
then forks the server from that warm state, so a server that dies, `kill -9` included, serves again in about a
second, with the routing it persisted. A server that keeps dying is restarted after a backoff that doubles (capped)
and resets once it has run for a while. SIGTERM or SIGINT stops the server and then the supervisor.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

FIRST_BACKOFF_S, MAX_BACKOFF_S, HEALTHY_AFTER_S = 0.1, 5.0, 30.0
STOP_GRACE_S = 15.0
# What the server imports at start and when it loads a model; imported once here so that each fork starts warm.
PRELOAD = ("mlops_platform.serving.__main__", "mlops_platform.serving.server", "mlops_platform.serving.api",
           "mlops_platform.serving.repository", "mlflow.sklearn", "skops.io", "cloudpickle", "torch",
           "mlops_platform.core.training", "mlops_platform.core.torch_training")


def _serve(server_args: list[str]) -> None:
    """The forked child: become the server."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from mlops_platform.serving.__main__ import main

    try:
        main(server_args)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _exit_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"code {os.WEXITSTATUS(status)}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlops_platform.serving.supervisor", description=__doc__)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("server_args", nargs=argparse.REMAINDER, help="after --: the arguments of python -m mlops_platform.serving")
    args = parser.parse_args(argv)
    server_args = args.server_args[1:] if args.server_args[:1] == ["--"] else args.server_args
    state_dir = Path(args.state_dir)
    stopping = False
    child = 0

    def stop(_signum, _frame) -> None:
        nonlocal stopping
        stopping = True
        if child:
            try:
                os.kill(child, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for module in PRELOAD:
        importlib.import_module(module)
    # What the imports built lives as long as the process: out of the collector's sight, a full collection triggered
    # by a large request no longer walks it (hundreds of milliseconds holding the GIL), and forks share its pages.
    gc.collect()
    gc.freeze()
    backoff, starts = FIRST_BACKOFF_S, 0
    while not stopping:
        started = time.monotonic()
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _serve(server_args)
        child, starts = pid, starts + 1
        (state_dir / "server.child.json").write_text(json.dumps({"pid": child, "starts": starts}))
        if stopping:  # the signal came while the child was being started
            os.kill(child, signal.SIGTERM)
        _, status = os.waitpid(child, 0)
        if stopping:
            break
        if time.monotonic() - started >= HEALTHY_AFTER_S:
            backoff = FIRST_BACKOFF_S
        print(f"supervisor: model server exited with {_exit_status(status)}; restarting in {backoff:.1f}s",
              file=sys.stderr, flush=True)
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)
    return 0


if __name__ == "__main__":
    sys.exit(main())
