"""Adaptive batching: concurrent requests share one prediction call, each gets exactly its own rows back, a full
queue refuses with ServerBusy, and a failing batch fails each of its requests."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from mlops_platform.integrations.registry import LoadedModel
from mlops_platform.serving.batching import BatchSettings, RevisionBatcher, ServerBusy

RNG = np.random.default_rng(0)
X = RNG.normal(size=(400, 3))
MODEL = LogisticRegression().fit(X, (X[:, 0] + X[:, 1] > 0).astype(int))


class Counting:
    """The classifier, counting its calls and the rows of each."""

    def __init__(self, fail: bool = False):
        self.calls: list[int] = []
        self.classes_ = MODEL.classes_
        self.fail = fail

    def predict_proba(self, matrix):
        self.calls.append(len(matrix))
        if self.fail:
            raise RuntimeError("model exploded")
        return MODEL.predict_proba(matrix)


class Timer:
    def __init__(self):
        self.observed = []

    def observe(self, seconds):
        self.observed.append(seconds)


def batcher(model, settings: BatchSettings, inline_rows: int = 256) -> RevisionBatcher:
    loaded = LoadedModel("m", "1", model, ["a", "b", "c"], ["double"] * 3, "long", "sklearn")
    return RevisionBatcher("m stable", loaded, Timer(), settings, ThreadPoolExecutor(1), inline_rows)


async def submit_all(b: RevisionBatcher, matrices):
    return await asyncio.gather(*(b.submit(m) for m in matrices), return_exceptions=True)


@pytest.mark.parametrize("inline_rows", [256, 0], ids=["on-the-loop", "on-the-thread"])
def test_concurrent_requests_share_calls_and_get_their_own_rows(inline_rows):
    model = Counting()
    b = batcher(model, BatchSettings(max_batch_rows=16), inline_rows)
    matrices = [X[i * 3:(i + 1) * 3 - (i % 2)] for i in range(40)]  # 40 requests of 2 or 3 rows
    results = asyncio.run(submit_all(b, matrices))
    assert len(model.calls) < len(matrices) and max(model.calls) <= 16 + 3
    for matrix, (labels, proba) in zip(matrices, results, strict=True):
        np.testing.assert_array_equal(proba, MODEL.predict_proba(matrix))
        np.testing.assert_array_equal(labels, MODEL.classes_[np.argmax(proba, axis=1)])
    assert b.queued_rows == 0


def test_a_lone_request_is_predicted_at_once_and_alone():
    model = Counting()
    b = batcher(model, BatchSettings())
    [(labels, _)] = asyncio.run(submit_all(b, [X[:1]]))
    assert model.calls == [1] and labels.shape == (1,)


def test_a_full_queue_refuses_with_server_busy():
    model = Counting()
    b = batcher(model, BatchSettings(max_batch_rows=4, max_queue_rows=8), inline_rows=0)
    results = asyncio.run(submit_all(b, [X[:4]] * 6))
    busy = [r for r in results if isinstance(r, ServerBusy)]
    served = [r for r in results if not isinstance(r, BaseException)]
    assert busy and served and len(busy) + len(served) == 6
    assert "its limit is 8" in str(busy[0]) and busy[0].retry_after_s >= 1
    assert b.queued_rows == 0


def test_a_failing_batch_fails_each_of_its_requests():
    b = batcher(Counting(fail=True), BatchSettings(max_batch_rows=8), inline_rows=0)
    results = asyncio.run(submit_all(b, [X[:2]] * 3))
    assert all(isinstance(r, RuntimeError) and "exploded" in str(r) for r in results)
    assert b.queued_rows == 0


def test_settings_from_the_spec():
    assert BatchSettings.from_spec({"enabled": False, "max_batch_rows": 8}) is None
    assert BatchSettings.from_spec({"max_batch_rows": 8, "max_delay_ms": 1.0, "max_queue_rows": 8}).max_batch_rows == 8
    with pytest.raises(ValueError):
        BatchSettings(max_batch_rows=10, max_queue_rows=5)
