"""Inference capture off the request path: offering rows never waits on the sink, a slow sink fills the bounded queue
and further rows are dropped and counted, a broken sink loses its batch (counted) and nothing else, and what is
written reads back partitioned by model and hour, joinable with feedback by request id."""

from __future__ import annotations

import threading
import time
import uuid

import numpy as np

from mlops_platform.integrations.capture import CaptureStore
from mlops_platform.serving.capture import DROPPED, CaptureWriter, feedback_of, inputs_of


def dropped(model: str, reason: str) -> float:
    return DROPPED.labels(model, reason)._value.get()


def rows(n: int) -> np.ndarray:
    return np.arange(n * 2, dtype=float).reshape(n, 2)


def test_written_rows_read_back_by_hour_and_join_their_labels():
    uri = f"memory://capture-{uuid.uuid4().hex}"
    writer = CaptureWriter(uri, flush_seconds=60)
    writer.offer(inputs_of("m", "r1", "3", "stable", ["a", "b"], rows(2), np.array(["yes", "no"], dtype=object)))
    writer.offer(inputs_of("m", "r2", "3", "stable", ["a", "b"], rows(1), np.array(["no"], dtype=object)))
    writer.offer(feedback_of("m", [{"request_id": "r1", "row": 1, "label": "yes"}, {"request_id": "r2", "label": "no"}]))
    writer.flush()
    store = CaptureStore(uri)
    captured = store.inputs("m", since=time.time() - 60)
    assert sorted(captured["request_id"]) == ["r1", "r1", "r2"] and list(captured.columns[:5]) == [
        "request_id", "row", "ts", "version", "revision"]
    import fsspec

    paths = fsspec.filesystem("memory").find(uri.removeprefix("memory://"))
    assert all("/m/inputs/date=" in p or "/m/feedback/date=" in p for p in paths)
    joined = store.labelled(captured, store.feedback("m"))
    assert sorted(zip(joined["request_id"], joined["row"], joined["prediction"], joined["label"], strict=True)) == [
        ("r1", 1, "no", "yes"), ("r2", 0, "no", "no")]
    writer.close()


def test_a_slow_sink_never_blocks_an_offer_and_drops_past_the_bound(monkeypatch):
    model = f"slow-{uuid.uuid4().hex[:6]}"
    release = threading.Event()
    writer = CaptureWriter(f"memory://capture-{uuid.uuid4().hex}", max_queue_rows=100, flush_rows=10, flush_seconds=0.01)
    monkeypatch.setattr(writer, "_write", lambda *args: release.wait(5))  # a sink that stalls
    waits, accepted = [], 0
    for i in range(200):
        started = time.perf_counter()
        accepted += writer.offer(inputs_of(model, f"r{i}", "1", "stable", ["a", "b"], rows(5), np.zeros(5)))
        waits.append(time.perf_counter() - started)
    assert max(waits) < 0.05, "an offer waited on the sink"
    assert writer.queued_rows <= 100
    assert 0 < accepted < 200
    assert dropped(model, "queue_full") == 5 * (200 - accepted), "every refused row is counted"
    release.set()
    writer.close()


def test_a_broken_sink_drops_its_batch_and_counts_it(tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the capture folder should be")
    model = f"broken-{uuid.uuid4().hex[:6]}"
    writer = CaptureWriter(str(blocker / "capture"), flush_seconds=60)
    assert writer.offer(inputs_of(model, "r", "1", "stable", ["a", "b"], rows(3), np.zeros(3)))
    writer.flush()
    assert dropped(model, "write_failed") == 3
    assert writer.offer(inputs_of(model, "r", "1", "stable", ["a", "b"], rows(1), np.zeros(1))), "it keeps accepting"
    writer.close()


def test_a_reader_on_a_local_disk_never_sees_a_part_file_half_written(tmp_path):
    """The drift report and the feedback join list the capture folder while requests are served: every part file
    they find reads whole (a CI run once read a 0-byte one mid-write)."""
    uri = str(tmp_path / "capture")
    writer = CaptureWriter(uri, flush_seconds=60)
    store, stop, errors, reads = CaptureStore(uri), threading.Event(), [], [0]

    def read_while_written() -> None:
        while not stop.is_set():
            try:
                store.inputs("m")
                store.feedback("m")
                reads[0] += 1
            except Exception as exc:  # any failure to read is what this test is about
                errors.append(repr(exc))

    reader = threading.Thread(target=read_while_written)
    reader.start()
    try:
        for i in range(150):
            writer.offer(inputs_of("m", f"r{i}", "3", "stable", ["a", "b"], rows(200), np.array(["yes"] * 200, dtype=object)))
            writer.offer(feedback_of("m", [{"request_id": f"r{i}", "row": 0, "label": "yes"}]))
            writer.flush()
    finally:
        stop.set()
        reader.join()
    assert errors == [] and reads[0] > 0
    assert len(store.inputs("m")) == 150 * 200
