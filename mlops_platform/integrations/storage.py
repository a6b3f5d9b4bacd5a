"""Landing storage: where raw batches arrive, per model, and where bad ones are quarantined with a note.

One store over fsspec for every location the profiles use: local paths, `memory://`, `s3://` (s3fs), `gs://`
(gcsfs) and `abfss://` / `az://` (adlfs). Credentials come from each SDK's own chain (environment, workload
identity), never from this code. Nothing here deletes data: a quarantined batch is moved, and its note says why.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import fsspec

from mlops_platform.core.data import batch_name_problem

BATCH_SUFFIXES = (".csv", ".parquet")
REASON_SUFFIX = ".reason.json"
# Where a change token comes from, per file system: object stores give an ETag, local disks a modification time.
_CHANGE_TOKENS = ("ETag", "etag", "md5Hash", "mtime", "last_modified", "LastModified", "created")


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def write_whole(fs: fsspec.AbstractFileSystem, path: str, payload: bytes) -> None:
    """Write so that no reader ever sees half of it: on a local disk a hidden partial file renamed into place (a
    listing never shows half a file under its own name); an object store's PUT appears whole or not at all."""
    folder, _, name = path.rpartition("/")
    fs.makedirs(folder, exist_ok=True)
    if is_local(fs):
        partial = f"{folder}/.{name}.{uuid.uuid4().hex}.partial"
        fs.pipe_file(partial, payload)
        fs.mv(partial, path)
    else:
        fs.pipe_file(path, payload)


def modified_at(info: dict) -> float:
    """When an entry of `fs.ls(detail=True)` last changed, in epoch seconds, whichever file system listed it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, str):
            return datetime.fromisoformat(value).timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def is_batch(name: str) -> bool:
    """A landing batch: a CSV or Parquet file, not a hidden one (uploads in progress are written as `.NAME.partial`)."""
    return name.endswith(BATCH_SUFFIXES) and not name.startswith(".")


class LandingStore(ABC):
    """Raw batches per model, and a quarantine for the bad ones."""

    @abstractmethod
    def list_batches(self, model: str) -> list[str]:
        """Names of the model's batches, sorted."""

    @abstractmethod
    def read(self, model: str, name: str) -> bytes:
        """The batch's bytes; a symbolic link is refused (ValueError), never followed."""

    @abstractmethod
    def is_link(self, model: str, name: str) -> bool:
        """Whether the landing entry is a symbolic link (only local disks have them)."""

    @abstractmethod
    def write(self, model: str, name: str, payload: bytes) -> str:
        """Store a batch so that no reader ever sees half of it; returns its URI."""

    @abstractmethod
    def quarantine(self, model: str, name: str, reason: str) -> str:
        """Move a bad batch aside with a note saying why; returns where it went."""

    @abstractmethod
    def fingerprint(self, model: str) -> dict[str, str]:
        """Batch name → a change token (ETag or modification time); sensors compare these."""

    @abstractmethod
    def uri(self, model: str, name: str) -> str:
        """Where a landing batch is, as a URI a person or another tool can open."""

    @abstractmethod
    def record_exclusion(self, model: str, name: str, token: str, reason: str) -> str:
        """Note that a file the platform may not move (the model's own source data) is set aside, as long as it is
        unchanged (`token`); returns where the note is."""

    @abstractmethod
    def exclusions(self, model: str) -> dict[str, str]:
        """Name → change token of the source files set aside."""


class FsspecLandingStore(LandingStore):
    """Landing and quarantine roots on any fsspec file system, e.g. `s3://bucket/landing` and `s3://bucket/quarantine`."""

    def __init__(self, landing_uri: str, quarantine_uri: str, storage_options: dict[str, Any] | None = None):
        options = storage_options or {}
        self.fs, self.landing_root = fsspec.core.url_to_fs(landing_uri, **options)
        quarantine_fs, self.quarantine_root = fsspec.core.url_to_fs(quarantine_uri, **options)
        if quarantine_fs.protocol != self.fs.protocol:
            raise ValueError(f"landing {landing_uri!r} and quarantine {quarantine_uri!r} must be on one file system, "
                             "so that a quarantine is a move and never a copy across stores")
        self.landing_uri, self.quarantine_uri = landing_uri.rstrip("/"), quarantine_uri.rstrip("/")

    def _landing(self, model: str, name: str = "") -> str:
        return "/".join(p for p in (self.landing_root.rstrip("/"), model, name) if p)

    def _entries(self, model: str) -> dict[str, dict]:
        folder = self._landing(model)
        self.fs.invalidate_cache(folder)  # others write here too: never answer from a listing cached earlier
        try:
            listing = self.fs.ls(folder, detail=True, refresh=True) if self.fs.isdir(folder) else []
        except TypeError:  # file systems without a listings cache take no `refresh`
            listing = self.fs.ls(folder, detail=True)
        entries = {}
        for info in listing:
            name = info["name"].rstrip("/").rsplit("/", 1)[-1]
            # Links are listed too, whatever they point at, so that they are refused and moved aside, never followed.
            if (info.get("type") == "file" or info.get("islink")) and is_batch(name):
                entries[name] = info
        return entries

    def list_batches(self, model: str) -> list[str]:
        return sorted(self._entries(model))

    @property
    def local(self) -> bool:
        return is_local(self.fs)

    def _move(self, source: str, target: str) -> None:
        """A rename on a local disk (a link moves as a link). An object store has no rename: the object is copied,
        then deleted, so a crash in between leaves two copies, never none."""
        if self.local:
            self.fs.mv(source, target)
        else:
            self.fs.copy(source, target)
            self.fs.rm(source)

    def is_link(self, model: str, name: str) -> bool:
        return self.local and bool(self.fs.info(self._landing(model, name)).get("islink"))

    def read(self, model: str, name: str) -> bytes:
        if self.is_link(model, name):
            raise ValueError(f"landing entry {model}/{name} is a symbolic link: refused, never followed")
        return self.fs.cat_file(self._landing(model, name))

    def write(self, model: str, name: str, payload: bytes) -> str:
        problem = batch_name_problem(name)
        if problem:
            raise ValueError(problem)
        write_whole(self.fs, self._landing(model, name), payload)
        return f"{self.landing_uri}/{model}/{name}"

    def quarantine(self, model: str, name: str, reason: str) -> str:
        folder = "/".join((self.quarantine_root.rstrip("/"), model))
        # A name unfit for a batch (too long, odd characters) is not reused as a key; the note keeps the original.
        safe = name if batch_name_problem(name) is None else f"renamed-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        key = f"{time.strftime('%Y%m%dT%H%M%S')}-{safe}"
        self.fs.makedirs(folder, exist_ok=True)
        # Move first, note second: a crash in between leaves the batch safe in quarantine, never lost.
        self._move(self._landing(model, name), f"{folder}/{key}")
        self.fs.pipe_file(f"{folder}/{key}{REASON_SUFFIX}", json.dumps({"batch": name, "reason": reason}, indent=2).encode())
        return f"{self.quarantine_uri}/{model}/{key}"

    def fingerprint(self, model: str) -> dict[str, str]:
        return {name: _change_token(info) for name, info in self._entries(model).items()}

    def uri(self, model: str, name: str) -> str:
        return f"{self.landing_uri}/{model}/{name}"

    def _exclusions_folder(self, model: str) -> str:
        return "/".join((self.quarantine_root.rstrip("/"), model, "excluded-source"))

    def record_exclusion(self, model: str, name: str, token: str, reason: str) -> str:
        folder = self._exclusions_folder(model)
        self.fs.makedirs(folder, exist_ok=True)
        key = f"{hashlib.sha256(name.encode()).hexdigest()[:16]}{REASON_SUFFIX}"
        note = {"batch": name, "token": token, "reason": reason, "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.fs.pipe_file(f"{folder}/{key}", json.dumps(note, indent=2).encode())
        return f"{self.quarantine_uri}/{model}/excluded-source/{key}"

    def exclusions(self, model: str) -> dict[str, str]:
        folder = self._exclusions_folder(model)
        if not self.fs.isdir(folder):
            return {}
        notes = [json.loads(self.fs.cat_file(path)) for path in self.fs.find(folder) if path.endswith(REASON_SUFFIX)]
        return {note["batch"]: note["token"] for note in notes}


@dataclass(frozen=True)
class Batch:
    """One file of a model's data: a landing batch (the platform's to move) or a file of the model's own source
    (the user's, read in place and never moved)."""

    name: str
    origin: str  # "landing" | "source"
    token: str
    uri: str


class BatchCatalog:
    """Every batch a model trains on: its landing batches and the files its `dataset.source` matches, on any fsspec
    file system. Setting a batch aside quarantines a landing batch; a source file stays where it is and is noted as
    excluded until it changes."""

    def __init__(self, store: LandingStore, model: str, source: str | None = None,
                 storage_options: dict[str, Any] | None = None):
        self.store, self.model, self.source = store, model, source
        self.storage_options = storage_options or {}

    def _source_files(self) -> dict[str, tuple[str, dict]]:
        if not self.source:
            return {}
        fs, pattern = fsspec.core.url_to_fs(self.source, **self.storage_options)
        fs.invalidate_cache()  # the user adds files at any time: list them afresh
        matched = fs.glob(pattern, detail=True) if fsspec.core.has_magic(pattern) else (
            {pattern: fs.info(pattern)} if fs.exists(pattern) else {})
        protocol = fs.protocol[0] if isinstance(fs.protocol, tuple) else fs.protocol
        files = {}
        for path, info in sorted(matched.items()):
            name = path.rstrip("/").rsplit("/", 1)[-1]
            if info.get("type") == "file" and is_batch(name):
                files[name] = (path if protocol in ("file", "local") else f"{protocol}://{path}", info)
        return files

    def batches(self) -> list[Batch]:
        """Sorted by name; a landing batch hides a source file of the same name."""
        excluded = self.store.exclusions(self.model)
        found: dict[str, Batch] = {}
        for name, (uri, info) in self._source_files().items():
            token = _change_token(info)
            if excluded.get(name) != token:
                found[name] = Batch(name, "source", token, uri)
        for name, token in self.store.fingerprint(self.model).items():
            found[name] = Batch(name, "landing", token, self.store.uri(self.model, name))
        return [found[name] for name in sorted(found)]

    def fingerprint(self) -> dict[str, str]:
        return {batch.name: batch.token for batch in self.batches()}

    def read(self, batch: Batch) -> bytes:
        if batch.origin == "landing":
            return self.store.read(self.model, batch.name)
        with fsspec.open(batch.uri, "rb", **self.storage_options) as fh:
            return fh.read()

    def find(self, name: str) -> Batch:
        for batch in self.batches():
            if batch.name == name:
                return batch
        known = [b.name for b in self.batches()]
        raise KeyError(f"model {self.model!r} has no batch {name!r}; its batches are {known}")

    def set_aside(self, batch: Batch, reason: str) -> str:
        """Out of training from now on, never deleted; returns where the batch (or its note) went."""
        if batch.origin == "landing":
            return self.store.quarantine(self.model, batch.name, reason)
        return self.store.record_exclusion(self.model, batch.name, batch.token, reason)


def _change_token(info: dict) -> str:
    token = next((info[k] for k in _CHANGE_TOKENS if info.get(k) is not None), "")
    return f"{token}:{info.get('size', '')}"
