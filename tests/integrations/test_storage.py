"""The landing store over fsspec: the same behaviour on `memory://` and on a local folder."""

from __future__ import annotations

import json
import uuid

import fsspec
import pytest

from mlops_platform.integrations.storage import FsspecLandingStore, is_batch

BATCH = b"a,b,target\n1,2,0\n3,4,1\n"


@pytest.fixture(params=["memory", "local"])
def roots(request, tmp_path) -> tuple[str, str]:
    if request.param == "memory":
        base = f"memory://landing-tests-{uuid.uuid4().hex}"
    else:
        base = str(tmp_path)
    return f"{base}/landing", f"{base}/quarantine"


def test_written_batches_are_listed_read_back_and_fingerprinted(roots):
    store = FsspecLandingStore(*roots)
    assert store.list_batches("m") == [] and store.fingerprint("m") == {}
    where = store.write("m", "b.parquet", b"PAR1")
    assert where == f"{roots[0]}/m/b.parquet"
    store.write("m", "a.csv", BATCH)
    assert store.list_batches("m") == ["a.csv", "b.parquet"]
    assert store.read("m", "a.csv") == BATCH
    assert set(store.fingerprint("m")) == {"a.csv", "b.parquet"}
    assert store.list_batches("other") == []


def test_a_rewritten_batch_changes_its_fingerprint(roots):
    store = FsspecLandingStore(*roots)
    store.write("m", "a.csv", BATCH)
    before = store.fingerprint("m")["a.csv"]
    store.write("m", "a.csv", BATCH + b"5,6,0\n")
    assert store.fingerprint("m")["a.csv"] != before


def test_partial_uploads_and_other_files_are_not_batches(roots):
    store = FsspecLandingStore(*roots)
    fs, root = fsspec.core.url_to_fs(roots[0])
    fs.makedirs(f"{root}/m", exist_ok=True)
    fs.pipe_file(f"{root}/m/.c.csv.partial", b"half")
    fs.pipe_file(f"{root}/m/notes.txt", b"not data")
    fs.makedirs(f"{root}/m/folder.csv", exist_ok=True)
    assert store.list_batches("m") == []
    assert not is_batch(".c.csv.partial") and is_batch("c.csv") and not is_batch("c.json")


def test_quarantine_moves_the_batch_with_its_reason_and_loses_nothing(roots):
    store = FsspecLandingStore(*roots)
    store.write("m", "bad.csv", BATCH)
    moved = store.quarantine("m", "bad.csv", "missing columns: ['x']")
    assert store.list_batches("m") == []
    assert moved.startswith(f"{roots[1]}/m/") and moved.endswith("-bad.csv")
    fs, path = fsspec.core.url_to_fs(moved)
    assert fs.cat_file(path) == BATCH
    note = json.loads(fs.cat_file(f"{path}.reason.json"))
    assert note == {"batch": "bad.csv", "reason": "missing columns: ['x']"}


def test_landing_and_quarantine_must_share_a_file_system(tmp_path):
    with pytest.raises(ValueError, match="one file system"):
        FsspecLandingStore(str(tmp_path / "landing"), "memory://quarantine")
