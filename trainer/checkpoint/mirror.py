"""Mirroring committed checkpoints to a remote run dir (``gs://``, ``s3://``, any fsspec URL).

TF always writes to a local folder. When the run dir is local that folder is the run dir's
own ``checkpoints`` and there is nothing to mirror (``Mirror``, which does nothing). When it
is remote the folder is a staging copy (``RemoteMirror``): a background thread uploads each
commit, files first and marker last, so training is blocked only for the local write; a
process that reads the chief's checkpoints downloads what it lacks. Which of the two is
decided once, at construction (``mirror_for``).
"""
from __future__ import annotations

import json
import logging
import os
import time

from ..storage import Storage, StorageError
from ..storage.worker import LatestOnlyWorker
from .commit import CommitDir
from .index import CORRUPT, DIR, MARKER, STATE_FILE, committed, leftovers, state_file_text, to_prune

log = logging.getLogger("trainer.checkpoints")


def mirror_for(storage: Storage, local: CommitDir, uploads: bool, upload_s: list) -> Mirror:
    """The mirror for the run dir ``storage``; ``uploads`` for the process that writes
    checkpoints (the chief), whose upload times go to ``upload_s``."""
    if storage.local_path(DIR) is not None:
        return Mirror(storage)
    return RemoteMirror(Bucket(storage, local), uploads, upload_s)


class Mirror:
    """A local run dir: the checkpoints are written where they belong, nothing is mirrored."""
    uploads = False  # whether this process uploads the checkpoints it writes

    def __init__(self, storage: Storage):
        self.storage = storage

    def names(self) -> list[str]:
        """The names in the mirror (none: the local folder is the whole truth)."""
        return []

    def read_text(self, name: str) -> str:
        """A commit marker that is not in the local folder."""
        return self.storage.read_text(f"{DIR}/{name}")

    def fetch(self, name: str, path: str) -> None:
        """Bring the file ``name`` to ``path`` (FileNotFoundError if the mirror lacks it too)."""

    def verified(self, manifest: dict) -> None:
        """A checkpoint fetched from the mirror verified; keep it locally as committed."""

    def submit(self, number: int, manifest: dict) -> None:
        """Mirror a new local commit."""

    def catch_up(self, number: int, manifest: dict) -> None:
        """A local commit the mirror lacks (a kill or an outage cut its upload short)."""

    def pending(self) -> set[int]:
        """Commits not mirrored yet, which local pruning must keep."""
        return set()

    def flush(self, written: bool, timeout_s: float) -> bool:
        """Wait until every commit is mirrored; ``written``: the local writes are done."""
        return written

    def close(self) -> None:
        pass

    def remove_leftovers(self) -> None:
        """At start: remove what an unfinished upload left in the mirror."""

    def set_aside(self, number: int, record: str) -> None:
        """Checkpoint ``number`` failed verification (``record`` says why): mark it there too."""


class RemoteMirror(Mirror):
    """A remote run dir, mirrored from the local staging folder (uploads only for the chief)."""

    def __init__(self, bucket: Bucket, uploads: bool, upload_s: list):
        super().__init__(bucket.storage)
        self.bucket = bucket
        os.makedirs(bucket.local.directory, exist_ok=True)  # downloads land there
        self.uploads = uploads
        self.uploader = _Uploader(bucket, upload_s) if uploads else None

    def names(self) -> list[str]:
        return self.storage.listdir(DIR)

    def fetch(self, name: str, path: str) -> None:
        self.storage.download(f"{DIR}/{name}", path)

    def verified(self, manifest: dict) -> None:
        self.bucket.local.keep_manifest(manifest)

    def submit(self, number: int, manifest: dict) -> None:
        if self.uploader:
            self.uploader.submit((number, manifest))

    def catch_up(self, number: int, manifest: dict) -> None:
        if self.uploader:  # so that a run with nothing left to train still ends with it in the bucket
            log.info("ckpt-%d is committed in %s but not in %s; uploading it", number,
                     self.bucket.local.directory, self.storage.url(DIR))
            self.uploader.submit((number, manifest))

    def pending(self) -> set[int]:
        return self.uploader.numbers() if self.uploader else set()

    def flush(self, written: bool, timeout_s: float) -> bool:
        """The uploads decide: a write still running is uploaded when it ends."""
        if not self.uploader:
            return written
        self.uploader.retry_now()
        return self.uploader.wait_idle(timeout_s)

    def close(self) -> None:
        if self.uploader:
            self.uploader.stop()

    def remove_leftovers(self) -> None:
        self.bucket.remove_leftovers()

    def set_aside(self, number: int, record: str) -> None:
        try:
            self.storage.write_text(f"{DIR}/ckpt-{number}{CORRUPT}", record)
            self.storage.delete(f"{DIR}/ckpt-{number}{MARKER}")
        except StorageError as exc:
            log.warning("could not set ckpt-%d aside remotely: %s", number, exc)


class Bucket:
    """The checkpoints folder of a remote run dir, the copy of the local folder ``local``."""

    def __init__(self, storage: Storage, local: CommitDir):
        self.storage = storage
        self.local = local

    @property
    def url(self) -> str:
        return self.storage.url(DIR)

    def upload(self, number: int, manifest: dict) -> None:
        """Files first, then the marker (the commit), then TF's state file, then pruning."""
        storage = self.storage
        for name in manifest["files"]:
            storage.upload(self.local.path(name), f"{DIR}/{name}")
        storage.write_text(f"{DIR}/ckpt-{number}{MARKER}", json.dumps(manifest, indent=1))
        names = storage.listdir(DIR)
        storage.write_text(f"{DIR}/{STATE_FILE}", state_file_text(committed(names)))
        for name in to_prune(names, self.local.max_to_keep):
            storage.delete(f"{DIR}/{name}")

    def remove_leftovers(self) -> None:
        stale = leftovers(self.storage.listdir(DIR))
        if stale:
            log.warning("removing %d leftover object(s) of unfinished uploads from %s: %s",
                        len(stale), self.url, ", ".join(stale[:6]))
            for name in stale:
                self.storage.delete(f"{DIR}/{name}")


class _Uploader(LatestOnlyWorker):
    """Uploads committed local checkpoints to the bucket.

    Only the newest waiting commit is uploaded (an older one is superseded),
    so the same files are never uploaded twice concurrently. It runs apart
    from the writer: a hanging or failing store never blocks training. A
    failure keeps the local copy, warns, and retries with backoff.
    """

    RETRY_S = (1, 2, 5, 10, 30)

    def __init__(self, bucket: Bucket, upload_s: list):
        self.bucket = bucket
        self.upload_s = upload_s
        self._failures = 0
        super().__init__("checkpoint-upload")

    def numbers(self) -> set[int]:
        with self._cond:
            return {item[0] for item in (self._pending, self._busy) if item is not None}

    def retry_now(self) -> None:
        with self._cond:
            self._failures = 0
            self._cond.notify_all()

    def _serve(self, item) -> None:
        number, manifest = item
        started = time.perf_counter()
        try:
            self.bucket.upload(number, manifest)
        except (StorageError, OSError) as exc:
            log.warning("upload of ckpt-%d to %s failed (%s); the local copy is kept and the "
                        "upload will be retried", number, self.bucket.url, exc)
            delay = self.RETRY_S[min(self._failures, len(self.RETRY_S) - 1)]
            self._failures += 1
            self._done(retry_item=item)
            with self._cond:  # back off, unless asked to flush or a newer commit arrives
                self._cond.wait(delay)
            return
        self._failures = 0
        self.upload_s.append(time.perf_counter() - started)
        log.info("ckpt-%d committed to %s in %.2fs", number, self.bucket.url, time.perf_counter() - started)
        self._done()
