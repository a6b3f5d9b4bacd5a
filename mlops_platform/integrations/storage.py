"""Landing storage: where raw batches arrive, per model, and where bad ones are quarantined with a note.

One store over fsspec for every location the profiles use: local paths, `memory://`, `s3://` (s3fs), `gs://`
(gcsfs) and `abfss://` / `az://` (adlfs). Credentials come from each SDK's own chain (environment, workload
identity), never from this code. Nothing here deletes data: a quarantined batch is moved, and its note says why.
"""

from __future__ import annotations

import hashlib
import json
import time
from abc import ABC, abstractmethod
from typing import Any

import fsspec

from mlops_platform.core.data import batch_name_problem

BATCH_SUFFIXES = (".csv", ".parquet")
REASON_SUFFIX = ".reason.json"
# Where a change token comes from, per file system: object stores give an ETag, local disks a modification time.
_CHANGE_TOKENS = ("ETag", "etag", "md5Hash", "mtime", "last_modified", "LastModified", "created")


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

    def is_link(self, model: str, name: str) -> bool:
        local = "file" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,))
        return local and bool(self.fs.info(self._landing(model, name)).get("islink"))

    def read(self, model: str, name: str) -> bytes:
        if self.is_link(model, name):
            raise ValueError(f"landing entry {model}/{name} is a symbolic link: refused, never followed")
        return self.fs.cat_file(self._landing(model, name))

    def write(self, model: str, name: str, payload: bytes) -> str:
        problem = batch_name_problem(name)
        if problem:
            raise ValueError(problem)
        path = self._landing(model, name)
        partial = self._landing(model, f".{name}.partial")
        self.fs.makedirs(self._landing(model), exist_ok=True)
        self.fs.pipe_file(partial, payload)
        self.fs.mv(partial, path)  # a listing never shows half a file under the batch's own name
        return f"{self.landing_uri}/{model}/{name}"

    def quarantine(self, model: str, name: str, reason: str) -> str:
        folder = "/".join((self.quarantine_root.rstrip("/"), model))
        # A name unfit for a batch (too long, odd characters) is not reused as a key; the note keeps the original.
        safe = name if batch_name_problem(name) is None else f"renamed-{hashlib.sha256(name.encode()).hexdigest()[:16]}"
        key = f"{time.strftime('%Y%m%dT%H%M%S')}-{safe}"
        self.fs.makedirs(folder, exist_ok=True)
        # Move first, note second: a crash in between leaves the batch safe in quarantine, never lost.
        self.fs.mv(self._landing(model, name), f"{folder}/{key}")
        self.fs.pipe_file(f"{folder}/{key}{REASON_SUFFIX}", json.dumps({"batch": name, "reason": reason}, indent=2).encode())
        return f"{self.quarantine_uri}/{model}/{key}"

    def fingerprint(self, model: str) -> dict[str, str]:
        return {name: _change_token(info) for name, info in self._entries(model).items()}


def _change_token(info: dict) -> str:
    token = next((info[k] for k in _CHANGE_TOKENS if info.get(k) is not None), "")
    return f"{token}:{info.get('size', '')}"
