"""Inference capture: what each sampled request asked and got, written as Parquet off the request path.

A request hands its rows to `CaptureWriter.offer`, which only appends to a bounded in-memory queue and returns; a
background thread turns the queue into Parquet files through fsspec, partitioned by model and hour:
`{uri}/{model}/inputs/date=YYYY-MM-DD/hour=HH/part-….parquet`. When the sink is slow or broken the queue fills and
new rows are dropped and counted (`mlops_capture_dropped_rows_total`): a request is never delayed or failed by
capture, and memory never grows past the bound. Ground truth posted to the feedback route goes the same way, under
`{uri}/{model}/feedback/`.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass

import numpy as np
from prometheus_client import Counter

logger = logging.getLogger(__name__)

CAPTURED = Counter("mlops_capture_written_rows", "Captured rows written to the capture store", ["model", "kind"])
DROPPED = Counter("mlops_capture_dropped_rows", "Captured rows dropped because the queue was full or the write failed",
                  ["model", "reason"])

INPUTS, FEEDBACK = "inputs", "feedback"


@dataclass
class Captured:
    """One request's rows, as they were: nothing is copied or converted on the request path. The writer stacks many
    requests' matrices into one frame on its own thread."""

    model: str
    kind: str  # inputs | feedback
    at: float
    request_id: str = ""
    version: str = ""
    revision: str = ""
    feature_names: tuple[str, ...] = ()
    matrix: np.ndarray | None = None
    predictions: np.ndarray | None = None
    labels: list[dict] | None = None

    @property
    def rows(self) -> int:
        return len(self.matrix) if self.matrix is not None else len(self.labels or [])


class CaptureWriter:
    """A bounded queue drained by one thread into Parquet files on any fsspec location."""

    def __init__(self, uri: str, storage_options: dict | None = None, max_queue_rows: int = 100_000,
                 flush_rows: int = 20_000, flush_seconds: float = 2.0):
        self.uri = uri.rstrip("/")
        self.storage_options = storage_options or {}
        self.max_queue_rows, self.flush_rows, self.flush_seconds = max_queue_rows, flush_rows, flush_seconds
        self._queue: deque[Captured] = deque()
        self._queued_rows = 0
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="capture-writer", daemon=True)
        self._thread.start()

    def offer(self, item: Captured) -> bool:
        """Queue the rows, or drop and count them when the queue is full; never blocks."""
        rows = item.rows
        with self._lock:
            if self._queued_rows + rows > self.max_queue_rows:
                DROPPED.labels(item.model, "queue_full").inc(rows)
                return False
            self._queue.append(item)
            self._queued_rows += rows
            if self._queued_rows >= self.flush_rows:
                self._wake.set()
        return True

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    def _take(self) -> list[Captured]:
        with self._lock:
            items = list(self._queue)
            self._queue.clear()
            self._queued_rows = 0
        return items

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()

    def flush(self) -> None:
        items = self._take()
        groups: dict[tuple[str, str, str], list[Captured]] = {}
        for item in items:
            hour = time.strftime("date=%Y-%m-%d/hour=%H", time.gmtime(item.at))
            groups.setdefault((item.model, item.kind, hour), []).append(item)
        for (model, kind, hour), group in groups.items():
            rows = sum(i.rows for i in group)
            try:
                self._write(model, kind, hour, group)
                CAPTURED.labels(model, kind).inc(rows)
            except Exception as exc:  # a broken sink loses this batch of captured rows, counted, and nothing else
                DROPPED.labels(model, "write_failed").inc(rows)
                logger.warning("capture write for %s failed, %d rows dropped: %s", model, rows, exc)

    def _write(self, model: str, kind: str, hour: str, group: list[Captured]) -> None:
        import io

        import fsspec

        from mlops_platform.integrations.storage import write_whole

        frame = feedback_frame(group) if kind == FEEDBACK else inputs_frame(group)
        path = f"{self.uri}/{model}/{kind}/{hour}/part-{time.time_ns()}-{uuid.uuid4().hex[:8]}.parquet"
        fs, target = fsspec.core.url_to_fs(path, **self.storage_options)
        payload = io.BytesIO()
        frame.to_parquet(payload, index=False)
        # A reader (the drift report, the feedback join) lists the folder while requests are served: on a local disk
        # it must never find a part file that is still being written.
        write_whole(fs, target, payload.getvalue())

    def close(self, timeout: float = 5.0) -> None:
        self._stopping = True
        self._wake.set()
        self._thread.join(timeout)
        self.flush()


def inputs_of(model: str, request_id: str, version: str, revision: str, feature_names: list[str], matrix: np.ndarray,
              predictions: np.ndarray) -> Captured:
    return Captured(model, INPUTS, time.time(), request_id, version, str(revision), tuple(feature_names), matrix,
                    predictions)


def feedback_of(model: str, labels: list[dict]) -> Captured:
    return Captured(model, FEEDBACK, time.time(), labels=labels)


def inputs_frame(group: list[Captured]):
    """Many requests' rows as one frame: identity, each feature, and the prediction per row. A request's matrix is
    stacked, not iterated, so the writer's work per request is a few microseconds."""
    import pandas as pd

    frames = []
    for names, items in _by_features(group).items():
        counts = np.array([len(i.matrix) for i in items])
        matrix = np.concatenate([i.matrix for i in items])
        columns = {
            "request_id": np.repeat(np.array([i.request_id for i in items], dtype=object), counts),
            "row": np.concatenate([np.arange(n) for n in counts]),
            "ts": np.repeat(np.array([i.at for i in items]), counts),
            "version": np.repeat(np.array([i.version for i in items], dtype=object), counts),
            "revision": np.repeat(np.array([i.revision for i in items], dtype=object), counts),
        }
        for j, name in enumerate(names):
            column = matrix[:, j]
            columns[name] = column if column.dtype != object else np.array(
                [v if isinstance(v, bool | int | float) else str(v) for v in column], dtype=object)
        predictions = np.concatenate([np.asarray(i.predictions) for i in items])
        columns["prediction"] = predictions if predictions.dtype != object else predictions.astype(str)
        frames.append(pd.DataFrame(columns))
    return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]


def _by_features(group: list[Captured]) -> dict[tuple[str, ...], list[Captured]]:
    out: dict[tuple[str, ...], list[Captured]] = {}
    for item in group:
        out.setdefault(item.feature_names, []).append(item)
    return out


def feedback_frame(group: list[Captured]):
    import pandas as pd

    labels = [(label, item.at) for item in group for label in item.labels]
    return pd.DataFrame({"request_id": [str(x["request_id"]) for x, _ in labels],
                         "row": [int(x.get("row", 0)) for x, _ in labels],
                         "label": [str(x["label"]) for x, _ in labels],
                         "ts": [at for _, at in labels]})
