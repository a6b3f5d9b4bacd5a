"""The landing store over fsspec: the same behaviour on `memory://` and on a local folder."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import fsspec
import pytest

from mlops_platform.integrations.storage import BatchCatalog, FsspecLandingStore, is_batch

BATCH = b"a,b,target\n1,2,0\n3,4,1\n"


@pytest.fixture(scope="module")
def emulators(tmp_path_factory):
    """moto's S3 server, the GCS emulator and Azurite, started once for this module and stopped by PID at its end."""
    from tests.emulators import azure_server, gcs_server, s3_server

    workdir = tmp_path_factory.mktemp("emulators")
    with s3_server(workdir) as s3, gcs_server(workdir) as gcs, azure_server(workdir) as azure:
        yield {"s3": s3, "gcs": gcs, "azure": azure}


@pytest.fixture(params=["memory", "local", *(pytest.param(cloud, marks=pytest.mark.slow) for cloud in ("s3", "gcs", "azure"))])
def roots(request, tmp_path) -> tuple[str, str]:
    """The same store on an in-memory file system, a local folder, and real S3, GCS and Azure Blob servers, reached as
    the cloud is reached: through the environment (endpoint and credential variables), never through code."""
    if request.param == "memory":
        base = f"memory://landing-tests-{uuid.uuid4().hex}"
    elif request.param == "local":
        base = str(tmp_path)
    else:
        from tests.emulators import environment, new_bucket

        emulator = request.getfixturevalue("emulators")[request.param]
        base = new_bucket(emulator)
        stack = environment(emulator.env)
        stack.__enter__()
        request.addfinalizer(lambda: stack.__exit__(None, None, None))
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


def test_the_store_writes_only_plain_batch_names(roots):
    store = FsspecLandingStore(*roots)
    for bad in ("x" * 200 + ".csv", "a b.csv", "../escape.csv", ".hidden.csv"):
        with pytest.raises(ValueError, match="is not allowed"):
            store.write("m", bad, BATCH)
    assert store.list_batches("m") == []


def test_a_symlink_is_reported_refused_and_moved_as_a_link(tmp_path):
    outside = tmp_path / "outside.csv"
    outside.write_bytes(b"SECRET\n")
    store = FsspecLandingStore(str(tmp_path / "landing"), str(tmp_path / "quarantine"))
    store.write("m", "real.csv", BATCH)
    (tmp_path / "landing" / "m" / "link.csv").symlink_to(outside)
    assert store.list_batches("m") == ["link.csv", "real.csv"]
    assert store.is_link("m", "link.csv") and not store.is_link("m", "real.csv")
    with pytest.raises(ValueError, match="symbolic link"):
        store.read("m", "link.csv")
    moved = store.quarantine("m", "link.csv", "symbolic link: refused, never followed")
    assert Path(moved).is_symlink() and outside.read_bytes() == b"SECRET\n"


def test_a_badly_named_batch_is_quarantined_under_a_safe_key_with_its_name_in_the_note(tmp_path):
    store = FsspecLandingStore(str(tmp_path / "landing"), str(tmp_path / "quarantine"))
    name = "y" * 250 + ".csv"
    (tmp_path / "landing" / "m").mkdir(parents=True)
    (tmp_path / "landing" / "m" / name).write_bytes(BATCH)
    moved = Path(store.quarantine("m", name, "bad name"))
    assert len(moved.name) < 60 and moved.read_bytes() == BATCH
    assert json.loads(moved.with_name(moved.name + ".reason.json").read_text())["batch"] == name


def _source_files(roots) -> str:
    """Two CSV files of a user's own data beside the landing area, and a glob that matches them."""
    base = roots[0].rsplit("/", 1)[0]
    fs, root = fsspec.core.url_to_fs(base)
    fs.makedirs(f"{root}/own", exist_ok=True)
    for name in ("jan.csv", "feb.csv"):
        fs.pipe_file(f"{root}/own/{name}", BATCH)
    fs.pipe_file(f"{root}/own/notes.txt", b"not data")
    return f"{base}/own/*.csv"


def test_the_catalog_reads_source_files_in_place_beside_landing_batches(roots):
    store = FsspecLandingStore(*roots)
    catalog = BatchCatalog(store, "m", _source_files(roots))
    store.write("m", "mar.csv", BATCH)
    batches = {b.name: b for b in catalog.batches()}
    assert sorted(batches) == ["feb.csv", "jan.csv", "mar.csv"]
    assert batches["jan.csv"].origin == "source" and batches["mar.csv"].origin == "landing"
    assert all(catalog.read(b) == BATCH for b in batches.values())
    assert batches["mar.csv"].uri == f"{roots[0]}/m/mar.csv"


def test_setting_aside_quarantines_landing_batches_and_notes_source_files_without_moving_them(roots):
    store = FsspecLandingStore(*roots)
    source = _source_files(roots)
    catalog = BatchCatalog(store, "m", source)
    store.write("m", "mar.csv", BATCH)
    moved = catalog.set_aside(catalog.find("mar.csv"), "shuffled labels")
    noted = catalog.set_aside(catalog.find("jan.csv"), "wrong month")
    assert [b.name for b in catalog.batches()] == ["feb.csv"]
    fs, root = fsspec.core.url_to_fs(source.rsplit("/", 1)[0])
    assert fs.exists(f"{root}/jan.csv"), "the user's own file is never moved"
    assert fs.cat_file(fsspec.core.url_to_fs(moved)[1]) == BATCH
    assert json.loads(fs.cat_file(fsspec.core.url_to_fs(noted)[1]))["reason"] == "wrong month"
    fs.pipe_file(f"{root}/jan.csv", BATCH + b"5,6,0\n")  # the user fixed the file: it counts again
    assert [b.name for b in catalog.batches()] == ["feb.csv", "jan.csv"]
    with pytest.raises(KeyError, match="has no batch 'nope.csv'"):
        catalog.find("nope.csv")


def test_asset_values_are_kept_per_run_on_every_store(roots):
    """The IO manager of every profile, on the same stores: each run reads back exactly what it wrote, even with
    another run of the same asset in between; a lone materialization reads the latest; old runs are pruned."""
    import dagster as dg

    from mlops_platform.defs.resources import KEEP_RUNS, RunScopedPickleIOManager

    io = RunScopedPickleIOManager(base_uri=roots[0].rsplit("/", 1)[0] + "/dagster-io")
    key = dg.AssetKey(["model", "challenger"])
    runs = [f"run-{i:02d}" for i in range(KEEP_RUNS + 2)]
    for run in runs:
        io.handle_output(dg.build_output_context(asset_key=key, run_id=run), {"written_by": run})

    def read(upstream_run: str | None):
        upstream = dg.build_output_context(asset_key=key, run_id=upstream_run) if upstream_run else None
        return io.load_input(dg.build_input_context(asset_key=key, upstream_output=upstream))["written_by"]

    assert read(runs[-3]) == runs[-3], "a run reads its own value, not the newer run's"
    assert read(None) == runs[-1]
    fs, root = fsspec.core.url_to_fs(io.base_uri)
    fs.invalidate_cache()
    kept = fs.ls(f"{root}/model/challenger/runs", detail=False)
    assert len(kept) == KEEP_RUNS and all(not p.endswith(f"{runs[0]}.pkl") for p in kept)
