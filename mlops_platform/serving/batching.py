"""Adaptive batching per revision, with a bounded queue.

Requests that reach a revision while it is busy, or in the same turn of the event loop, are predicted together in
one call, up to `max_batch_rows` rows; an idle revision predicts a lone request at once (no added latency unless
`max_delay_ms` asks to wait for company). Rows waiting are bounded by `max_queue_rows`: past it a request is refused
with 503 and `Retry-After`, so the server never grows without bound. Each request gets back exactly its own rows.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

import numpy as np

from mlops_platform.core.training import predict
from mlops_platform.integrations.registry import LoadedModel


@dataclass(frozen=True)
class BatchSettings:
    """How one endpoint batches; the model spec's `serving.batching` block."""

    max_batch_rows: int = 64
    max_delay_ms: float = 0.0
    max_queue_rows: int = 8192

    @classmethod
    def from_spec(cls, raw: dict) -> BatchSettings | None:
        """From the spec's `serving.batching` block (as a dict); None when it says `enabled: false`."""
        settings = dict(raw)
        return cls(**settings) if settings.pop("enabled", True) else None

    def __post_init__(self):
        if self.max_batch_rows < 1 or self.max_queue_rows < self.max_batch_rows or not 0 <= self.max_delay_ms <= 1000:
            raise ValueError(f"batching needs 1 ≤ max_batch_rows ≤ max_queue_rows and 0 ≤ max_delay_ms ≤ 1000, got {self}")


class ServerBusy(Exception):
    """The revision's queue is full; the client should retry after `retry_after_s` (answered 503)."""

    def __init__(self, message: str, retry_after_s: int = 1):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class RevisionBatcher:
    """Queues matrices for one revision and predicts them in batches; `submit` returns one request's own results.

    A batch of up to `inline_rows` rows is predicted on the event loop (well under a millisecond for a tabular model);
    a larger one, or any batch when `inline_rows` is 0, on the revision's thread.
    """

    def __init__(self, name: str, loaded: LoadedModel, timer: Any, settings: BatchSettings, pool: Executor,
                 inline_rows: int):
        self.name, self.loaded, self.timer, self.settings = name, loaded, timer, settings
        self.pool, self.inline_rows = pool, inline_rows
        self._pending: list[tuple[np.ndarray, asyncio.Future]] = []
        self._queued_rows = 0
        self._busy = False
        self._scheduled = False

    @property
    def queued_rows(self) -> int:
        return self._queued_rows

    async def submit(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._queued_rows + len(matrix) > self.settings.max_queue_rows:
            raise ServerBusy(f"{self.name} has {self._queued_rows} rows waiting, its limit is "
                             f"{self.settings.max_queue_rows}; retry shortly")
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((matrix, future))
        self._queued_rows += len(matrix)
        if not self._busy and not self._scheduled:
            self._scheduled = True
            delay = self.settings.max_delay_ms / 1000
            # call_soon still lets every request that arrived in this turn of the loop join the batch.
            loop.call_later(delay, self._flush) if delay else loop.call_soon(self._flush)
        return await future

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future]]:
        batch, rows = [], 0
        while self._pending and (not batch or rows + len(self._pending[0][0]) <= self.settings.max_batch_rows):
            matrix, future = self._pending.pop(0)
            batch.append((matrix, future))
            rows += len(matrix)
        return batch

    def _flush(self) -> None:
        self._scheduled = False
        batch = self._take()
        if not batch:
            return
        rows = sum(len(m) for m, _ in batch)
        if rows <= self.inline_rows:
            self._finish(batch, self._run(batch))
            self._next()
            return
        self._busy = True
        try:
            future = asyncio.get_running_loop().run_in_executor(self.pool, self._run, batch)
        except RuntimeError:  # the routing changed and released this revision's thread: finish on another one
            future = asyncio.ensure_future(asyncio.to_thread(self._run, batch))
        future.add_done_callback(lambda done: self._done(batch, done))

    def _run(self, batch) -> tuple[np.ndarray, np.ndarray] | BaseException:
        try:
            matrix = np.concatenate([m for m, _ in batch]) if len(batch) > 1 else batch[0][0]
            started = time.perf_counter()
            result = predict(self.loaded.model, matrix)
            self.timer.observe(time.perf_counter() - started)
            return result
        except Exception as exc:  # handed to each request of the batch
            return exc

    def _done(self, batch, done) -> None:
        self._busy = False
        self._finish(batch, done.result())
        self._next()

    def _finish(self, batch, result) -> None:
        self._queued_rows -= sum(len(m) for m, _ in batch)
        start = 0
        for matrix, future in batch:
            if future.done():  # the client went away
                start += len(matrix)
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                labels, proba = result
                end = start + len(matrix)
                future.set_result((labels[start:end], None if proba is None else proba[start:end]))
            start += len(matrix)

    def _next(self) -> None:
        if self._pending and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)
