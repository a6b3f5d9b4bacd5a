"""The served model: one `kserve.Model` per endpoint, sending each request to its stable or its canary revision."""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

import numpy as np
from kserve import Model
from kserve.protocol.infer_type import InferRequest

from mlops_platform.core.canary import Revision
from mlops_platform.core.training import predict as model_predict
from mlops_platform.integrations.registry import LoadedModel
from mlops_platform.serving import protocol
from mlops_platform.serving.batching import RevisionBatcher
from mlops_platform.serving.capture import CaptureWriter, inputs_of
from mlops_platform.serving.metrics import COMPUTE
from mlops_platform.serving.routing import Routing, Splitter

# Requests up to this many rows are computed on the event loop when no canary is in flight (well under a millisecond
# for a tabular model); larger ones on the revision's thread.
INLINE_ROWS = 256

# Filled in by the model while it answers; read by the middleware that times the request and counts it.
CURRENT_REQUEST: ContextVar[dict | None] = ContextVar("mlops_current_request", default=None)


class EndpointModel(Model):
    """One endpoint name answering V1 and V2; each request goes to the stable or the canary revision.

    With a canary, each revision computes on its own thread, as it would in its own pod: a slow canary queues its own
    requests, not the stable revision's, so the latency comparison stays fair. Alone, the stable revision computes a
    small request (the common case, well under a millisecond) on the event loop, which is cheaper and keeps the tail
    short under concurrency; a large one goes to its thread, so health checks and other endpoints keep answering
    while it is predicted.
    """

    def __init__(self, name: str, routing: Routing, stable: LoadedModel, canary: LoadedModel | None = None,
                 stable_label: Revision = Revision.STABLE, max_rows: int = protocol.DEFAULT_MAX_ROWS,
                 capture: CaptureWriter | None = None):
        super().__init__(name)
        self.capture = capture if routing.capture_rate > 0 else None
        self.routing, self.stable, self.canary = routing, stable, canary
        self.max_rows = max_rows
        self.stable_label = stable_label
        self._splitter = Splitter(routing.canary_percent if canary else 0)
        self._schemas = {id(m): protocol.InputSchema.from_signature(m.feature_names, m.feature_types)
                         for m in (stable, canary) if m is not None}
        revisions = (stable_label, Revision.CANARY) if canary else (stable_label,)
        self._threads = {rev: ThreadPoolExecutor(1, thread_name_prefix=f"{name}-{rev}") for rev in revisions}
        loaded_by_revision = {stable_label: stable, Revision.CANARY: canary}
        self._batchers = {rev: RevisionBatcher(f"{name} {rev}", loaded_by_revision[rev], COMPUTE.labels(name, rev),
                                               routing.batching, self._threads[rev], INLINE_ROWS if canary is None else 0)
                          for rev in revisions} if routing.batching else {}
        # Histogram children resolved once here, not per request on the hot path.
        self._timers = {rev: COMPUTE.labels(name, rev) for rev in (stable_label, Revision.CANARY)}
        self.ready = True

    @property
    def version(self) -> str:
        return self.stable.version

    @property
    def flavor(self) -> str:
        return self.stable.flavor

    def release(self) -> None:
        """Let the revision threads finish what they hold, then end."""
        for pool in self._threads.values():
            pool.shutdown(wait=False)

    def get_input_types(self) -> list[dict]:
        return protocol.input_metadata(self._schemas[id(self.stable)])

    def get_output_types(self) -> list[dict]:
        classes = self.stable.classes
        return protocol.output_metadata(self.stable.output_type, None if classes is None else len(classes))

    async def predict(self, payload: Any, headers: dict[str, str] | None = None, response_headers=None):
        note = CURRENT_REQUEST.get()
        pinned = note.get("pinned") if note is not None else None  # a version path names its revision
        if pinned is not None:
            canary = pinned == Revision.CANARY and self.canary is not None
        else:
            canary = self._splitter.next_is_canary()
        revision, loaded = (Revision.CANARY, self.canary) if canary else (self.stable_label, self.stable)
        if note is not None:
            note["revision"], note["version"] = revision, loaded.version
        v2 = isinstance(payload, InferRequest)
        parse = protocol.parse_v2 if v2 else protocol.parse_v1
        schema = self._schemas[id(loaded)]
        if self._batchers:
            if protocol.row_count(payload) <= INLINE_ROWS:
                matrix = parse(payload, schema, self.max_rows)
            else:
                matrix = await asyncio.get_running_loop().run_in_executor(None, parse, payload, schema, self.max_rows)
            labels, proba = await self._batchers[revision].submit(matrix)
            self._capture(note, payload, revision, loaded, matrix, labels)
            if v2:
                return protocol.v2_response(self.name, loaded.version, payload, labels, proba, loaded.output_type,
                                            _request_id(note, payload))
            return protocol.v1_response(labels)
        work = (parse, payload, loaded, schema, self.max_rows, self._timers[revision])
        if self.canary is None and protocol.row_count(payload) <= INLINE_ROWS:
            labels, proba, matrix = _parse_and_classify(*work)
        else:  # turning a large body into a matrix takes as long as predicting it: both off the loop
            try:
                future = asyncio.get_running_loop().run_in_executor(self._threads[revision], _parse_and_classify, *work)
            except RuntimeError:  # the routing changed under this request and released its threads: finish here
                future = asyncio.to_thread(_parse_and_classify, *work)
            labels, proba, matrix = await future
        self._capture(note, payload, revision, loaded, matrix, labels)
        if v2:
            return protocol.v2_response(self.name, loaded.version, payload, labels, proba, loaded.output_type,
                                        _request_id(note, payload))
        return protocol.v1_response(labels)

    def _capture(self, note: dict | None, payload: Any, revision: Revision, loaded: LoadedModel, matrix: np.ndarray,
                 labels: np.ndarray) -> None:
        """Hand a sampled request to the capture writer: a queue append, nothing more, on the request path."""
        if self.capture is None or random.random() >= self.routing.capture_rate:
            return
        self.capture.offer(inputs_of(self.name, _request_id(note, payload), loaded.version, revision,
                                     loaded.feature_names, matrix, labels))


def _request_id(note: dict | None, payload: Any) -> str:
    """The id the middleware gave this request (the client's X-Request-Id, or a new one); over gRPC, the V2 id."""
    if note is not None and note.get("request_id"):
        return note["request_id"]
    given = getattr(payload, "id", None)
    if not given:
        given = uuid.uuid4().hex
        if isinstance(payload, InferRequest):
            payload.id = given
    return given


def _parse_and_classify(parse, payload: Any, loaded: LoadedModel, schema: protocol.InputSchema, max_rows: int,
                        timer) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    matrix = parse(payload, schema, max_rows)
    started = time.perf_counter()
    labels, proba = model_predict(loaded.model, matrix)
    timer.observe(time.perf_counter() - started)
    return labels, proba, matrix
