"""Where checkpoints are saved and restored: the one object the training loop talks to.

Layout of ``<run-dir>/checkpoints`` (a standard TF checkpoint directory)::

    ckpt-12.index, ckpt-12.data-00000-of-00001   written by tf.train.CheckpointManager
    ckpt-10.milestone                            ckpt-10 is an epoch milestone: retention keeps it
    ckpt-12.commit.json                          manifest (step, files, sizes, CRC32), written LAST
    checkpoint                                   TF state file, rewritten to name committed ones only
    ckpt-9.corrupt.json                          a checkpoint that failed verification, set aside

A checkpoint counts only once its commit marker exists (``commit``). Numbers only grow and
a save never overwrites an existing checkpoint. The store ties together the pieces that
change independently: the TensorFlow snapshot (``snapshot``), the commit protocol in the
local folder TF writes to (``commit``) and the mirror to a remote run dir (``mirror``).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field

from ..storage import Storage
from ..storage.worker import LatestOnlyWorker
from .commit import CommitDir
from .errors import CheckpointError, CheckpointWriteError, CorruptCheckpoint, IncompatibleCheckpoint
from .index import DIR, committed, number_of
from .mirror import Mirror, mirror_for
from .snapshot import Snapshot, state_file_readable

# (the errors callers catch, importable from here as before the split)
__all__ = ["CheckpointError", "CheckpointStore", "IncompatibleCheckpoint", "SaveStats"]

log = logging.getLogger("trainer.checkpoints")


@dataclass
class SaveStats:
    """Timings the benchmarks and the closing log line report."""
    blocked_s: list = field(default_factory=list)   # training loop stalled per save
    write_s: list = field(default_factory=list)     # background TF write + commit
    upload_s: list = field(default_factory=list)


class CheckpointStore:
    """Saves are snapshots: the training loop only copies the variables into a
    shadow set (in host memory unless ``on_device``); a single writer thread writes that snapshot with
    CheckpointManager, commits it and, for remote runs, hands it to the mirror.

    With ``writes=False`` (a worker that is not the chief) a save is only the
    snapshot, which every worker must take part in (it reads mirrored and
    summed variables collectively); restoring reads the chief's checkpoints,
    downloading a remote run's into ``local_dir``, a folder of its own."""

    def __init__(self, groups: dict[str, dict], storage: Storage, local_dir: str, max_to_keep: int,
                 writes: bool = True, on_device: bool = False, holds_replica_zero: bool = True):
        self.storage = storage          # the run directory
        self.local_dir = local_dir      # where TF writes
        self.writes = writes
        self.stats = SaveStats()
        self.snapshot = Snapshot(groups, on_device, holds_replica_zero)
        self.snapshot_variables = self.snapshot.variables  # where a save's copy lives
        self.local = CommitDir(local_dir, max_to_keep)
        self.mirror: Mirror = mirror_for(storage, self.local, writes, self.stats.upload_s)
        self.writer = None
        if writes:
            os.makedirs(local_dir, exist_ok=True)
        self._last_number = max(self._all_numbers(), default=0)
        if not writes:
            return
        if not state_file_readable(local_dir):
            self.local.rebuild_state_file()
        self.writer = _Writer(self.snapshot.manager(local_dir), self.local, self.mirror, self.stats)

    def _all_numbers(self) -> set[int]:
        names = self.local.names() + self.mirror.names()
        return {n for n in map(number_of, names) if n is not None}

    # ----------------------------------------------------------------- saving
    def save(self, meta: dict) -> int:
        """Snapshot the variables and hand them to the writer; returns the checkpoint number."""
        started = time.perf_counter()
        if self.writer:
            self.writer.wait_idle()  # the writer has finished reading the shadow set
            self.writer.raise_error()
        self.snapshot.take()
        self._last_number += 1
        if self.writer:
            self.writer.submit((self._last_number, meta))
        self.stats.blocked_s.append(time.perf_counter() - started)
        return self._last_number

    def flush(self, timeout_s: float) -> bool:
        """Wait until every save is committed (and mirrored, for remote runs)."""
        if not self.writer:
            return True
        deadline = time.monotonic() + timeout_s
        self.writer.wait_idle(timeout_s)
        self.writer.raise_error()
        return self.mirror.flush(self.writer.idle(), max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if not self.writer:
            return
        self.writer.stop(join_s=10.0)  # a local write in progress is worth finishing
        self.mirror.close()

    @property
    def last_number(self) -> int:
        return self._last_number

    def follow(self, last_number: int) -> None:
        """A reader numbers its snapshots like the chief (whose listing may differ from ours)."""
        self._last_number = last_number

    def cleanup_stale(self) -> None:
        """At start: delete leftovers of uncommitted checkpoints, here and in the mirror."""
        self.local.remove_leftovers()
        self.mirror.remove_leftovers()
        self.local.write_state_file()

    # ----------------------------------------------------------------- restoring
    def newest_usable(self) -> dict | None:
        """The manifest of the newest committed checkpoint that verifies (nothing is restored).

        Corrupt checkpoints are set aside with a warning and the previous one is
        tried. None only when the run has no committed checkpoint at all.
        """
        in_mirror = set(committed(self.mirror.names()))
        candidates = sorted(set(self.local.committed()) | in_mirror, reverse=True)
        for number in candidates:
            try:
                manifest = self._verify(number)
                if number not in in_mirror:
                    self.mirror.catch_up(number, manifest)
                return manifest
            except CorruptCheckpoint as exc:
                log.warning("checkpoint ckpt-%d is unusable: %s; setting it aside and "
                            "falling back to the previous one", number, exc)
                self.mirror.set_aside(number, self.local.set_aside(number, str(exc)))
        if candidates:
            raise CheckpointError(
                f"none of the {len(candidates)} committed checkpoint(s) in "
                f"{self.storage.url(DIR)} could be restored (see the warnings above); "
                "nothing was overwritten. Start a new run with another --run-dir, or "
                "--fresh to archive this one and start over")
        return None

    def restore(self, number: int) -> dict:
        """Verify and restore committed checkpoint ``number`` (no fallback); its manifest.
        CorruptCheckpoint if it fails verification, IncompatibleCheckpoint for another model.
        Under MultiWorkerMirroredStrategy restoring is collective: every worker calls it."""
        manifest = self._verify(number)
        self.snapshot.restore(self.local.path(manifest["prefix"]))
        return manifest

    def _verify(self, number: int) -> dict:
        """Fetch (from the mirror), check sizes, CRC32 and the variables' names and shapes; the manifest."""
        manifest = self.local.read_manifest(number, self.mirror.read_text)
        self.local.verify(manifest, self.mirror.fetch)
        self.mirror.verified(manifest)
        self.snapshot.check_compatible(self.local.path(manifest["prefix"]),
                                       f"ckpt-{number} in {self.storage.url(DIR)}")
        return manifest


class _Writer(LatestOnlyWorker):
    """Writes each snapshot with ``manager`` and commits it in ``local``, then hands it to the
    mirror and prunes; a failed write (disk full) is reported to the training loop at its
    next save or flush."""

    def __init__(self, manager, local: CommitDir, mirror: Mirror, stats: SaveStats):
        self.manager = manager  # a tf.train.CheckpointManager of the shadow set
        self.local = local
        self.mirror = mirror
        self.stats = stats
        self.error: Exception | None = None
        super().__init__("checkpoint-writer")

    def raise_error(self) -> None:
        if self.error is not None:
            error, self.error = self.error, None
            raise error

    def _serve(self, item) -> None:
        number, meta = item
        started = time.perf_counter()
        try:
            prefix = self.manager.save(checkpoint_number=number)
            manifest = self.local.commit(number, os.path.basename(prefix), meta)
        except Exception as exc:  # disk full, permissions, ...: reported to the training loop
            self.local.discard(number)
            good = self.local.committed()
            self.error = CheckpointWriteError(
                f"writing ckpt-{number} to {self.local.directory} failed: {exc}; the earlier checkpoint "
                f"{'ckpt-%d' % good[0] if good else '(none)'} is intact. Free space or fix the folder, then "
                "re-run the same command to resume")
            self._done()
            return
        self.stats.write_s.append(time.perf_counter() - started)
        self.mirror.submit(number, manifest)
        self.local.prune(keep_also=self.mirror.pending())
        self._done()
