"""The commit protocol: what makes a written checkpoint count, and how one is checked.

A checkpoint's files are fsynced, then ``ckpt-<n>.commit.json`` (its manifest: each file's
size and CRC32) is written last, atomically. So a crash at any moment leaves at worst an
uncommitted checkpoint, which the next start deletes, and a committed one can be verified
file by file against its manifest before it is trusted.

This module never loads TensorFlow: the protocol is plain files, testable alone, and the
same verification serves a restore and a rollback (``rollback.plan``).
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable

from ..storage import atomic_write
from .errors import CorruptCheckpoint
from .index import (
    CORRUPT,
    DIR,
    MARKER,
    MILESTONE,
    STATE_FILE,
    committed,
    leftovers,
    number_of,
    state_file_text,
    to_prune,
)

log = logging.getLogger("trainer.checkpoints")

MISSING, WRONG_SIZE, WRONG_CRC = "missing", "size", "crc32"  # what can be wrong with a listed file


def crc32_of(path: str) -> int:
    """Streamed in chunks: a checkpoint file may be larger than the memory to spare."""
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def damage(path: str, info: dict) -> str | None:
    """MISSING, WRONG_SIZE or WRONG_CRC when the file at ``path`` is not the one its manifest
    entry ``info`` describes; None when it is (the cheap checks first)."""
    if not os.path.exists(path):
        return MISSING
    if os.path.getsize(path) != info["size"]:
        return WRONG_SIZE
    if crc32_of(path) != info["crc32"]:
        return WRONG_CRC
    return None


def _describe(kind: str, name: str, path: str, info: dict) -> str:
    if kind == MISSING:
        return f"{name} is listed in the manifest but missing"
    if kind == WRONG_SIZE:
        return f"{name} has {os.path.getsize(path)} bytes, manifest says {info['size']} (truncated?)"
    return f"{name} fails its CRC32 check (bit rot or a partial write)"


def marker_name(number: int) -> str:
    return f"ckpt-{number}{MARKER}"


def parse_manifest(name: str, read: Callable[[], str]) -> dict:
    """The manifest that ``read()`` returns; CorruptCheckpoint when it is not one."""
    try:
        manifest = json.loads(read())
        manifest["files"], manifest["prefix"]
        return manifest
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptCheckpoint(f"commit marker {name} is damaged ({exc})") from exc


def stored_damage(storage, manifest: dict) -> tuple[str, str] | None:
    """(file name, kind of damage) of the first file of ``manifest`` that fails its check in
    the run dir ``storage``, or None. A remote file is downloaded to a temporary folder and
    checked there, so that no file is ever held in memory whole."""
    with tempfile.TemporaryDirectory(prefix="verify-") as tmp:
        for name, info in manifest["files"].items():
            kind = _stored_file_damage(storage, name, info, tmp)
            if kind:
                return name, kind
    return None


def _stored_file_damage(storage, name: str, info: dict, tmp: str) -> str | None:
    path = storage.local_path(f"{DIR}/{name}")
    if path is not None:
        return damage(path, info)
    copy = os.path.join(tmp, name)
    try:
        storage.download(f"{DIR}/{name}", copy)
    except FileNotFoundError:
        return MISSING
    try:
        return damage(copy, info)
    finally:
        _remove(copy)


class CommitDir:
    """The local folder TF writes checkpoints into, and the commit protocol applied to it:
    committing, verifying, setting aside, pruning, and TF's ``checkpoint`` state file, which
    is rewritten to name committed checkpoints only."""

    def __init__(self, directory: str, max_to_keep: int):
        self.directory = directory
        self.max_to_keep = max_to_keep

    def path(self, name: str) -> str:
        return os.path.join(self.directory, name)

    def names(self) -> list[str]:
        try:
            return os.listdir(self.directory)
        except FileNotFoundError:  # a reader's view of a run with no checkpoint yet
            return []

    def committed(self) -> list[int]:
        return committed(self.names())

    # ------------------------------------------------------------------ writing
    def commit(self, number: int, prefix: str, meta: dict) -> dict:
        """Commit the files TF wrote under ``prefix`` (a base name): fsync them, then write
        the manifest, the marker, last. An epoch milestone gets a file of its own first, so
        that retention sees it without reading manifests (and it is verified with the rest)."""
        if meta.get("milestone"):
            _atomic_write(self.path(f"ckpt-{number}{MILESTONE}"), json.dumps({"epoch": meta.get("epoch")}))
        manifest = {"number": number, "prefix": prefix, "time": time.time(), **meta, "files": {}}
        for name in sorted(self.names()):
            if name.startswith(prefix + ".") and not name.endswith(".json"):
                manifest["files"][name] = _synced_entry(self.path(name))
        _atomic_write(self.path(marker_name(number)), json.dumps(manifest, indent=1))
        self.write_state_file()
        return manifest

    def discard(self, number: int) -> None:
        """Remove the files of a checkpoint whose write failed."""
        for name in self.names():
            if number_of(name) == number:
                _remove(self.path(name))

    def keep_manifest(self, manifest: dict) -> None:
        """Commit here a checkpoint verified from elsewhere (its files are already here)."""
        path = self.path(marker_name(manifest["number"]))
        if not os.path.exists(path):
            _atomic_write(path, json.dumps(manifest, indent=1))

    def write_state_file(self) -> None:
        done = self.committed()
        if done:
            _atomic_write(self.path(STATE_FILE), state_file_text(done))

    def rebuild_state_file(self) -> None:
        """Replace a garbage ``checkpoint`` file by one made from the markers, which are the truth."""
        log.warning("%s is unreadable; rebuilding it from the commit markers", self.path(STATE_FILE))
        os.remove(self.path(STATE_FILE))
        self.write_state_file()

    def prune(self, keep_also=()) -> None:
        for name in to_prune(self.names(), self.max_to_keep, keep_also):
            _remove(self.path(name))

    def remove_leftovers(self) -> None:
        """At start (no writer alive): delete the files of uncommitted checkpoints."""
        stale = leftovers(self.names())
        if stale:
            log.warning("removing %d leftover file(s) of uncommitted checkpoints: %s",
                        len(stale), ", ".join(stale[:6]))
            for name in stale:
                _remove(self.path(name))

    # ----------------------------------------------------------------- checking
    def read_manifest(self, number: int, read_elsewhere: Callable[[str], str]) -> dict:
        """Checkpoint ``number``'s manifest, from here or, when it is not here, ``read_elsewhere(name)``."""
        name = marker_name(number)
        path = self.path(name)
        return parse_manifest(name, lambda: _read(path) if os.path.exists(path) else read_elsewhere(name))

    def verify(self, manifest: dict, fetch: Callable[[str, str], None]) -> None:
        """CorruptCheckpoint unless every file of ``manifest`` is here with its size and CRC32.
        ``fetch(name, path)`` is given a chance to bring a file that is missing or differs (a
        mirror's download; FileNotFoundError when the mirror lacks it too)."""
        for name, info in manifest["files"].items():
            path = self.path(name)
            if damage(path, info) is None:
                continue
            try:
                fetch(name, path)
            except FileNotFoundError:
                raise CorruptCheckpoint(_describe(MISSING, name, path, info)) from None
            kind = damage(path, info)
            if kind:
                raise CorruptCheckpoint(_describe(kind, name, path, info))

    def set_aside(self, number: int, reason: str) -> str:
        """Replace the commit marker by a corrupt marker (written first); the record written."""
        record = json.dumps({"number": number, "reason": reason, "time": time.time()})
        _atomic_write(self.path(f"ckpt-{number}{CORRUPT}"), record)
        _remove(self.path(marker_name(number)))
        return record


def _synced_entry(path: str) -> dict:
    """A manifest entry; the file is fsynced first, so the marker never names unwritten data."""
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    return {"size": os.path.getsize(path), "crc32": crc32_of(path)}


def _read(path: str) -> str:
    with open(path) as fh:
        return fh.read()


def _remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)
    else:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _atomic_write(path: str, text: str) -> None:
    atomic_write(path, text.encode())
