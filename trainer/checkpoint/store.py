"""Where checkpoints are written, committed, uploaded, pruned and restored.

Layout of ``<run-dir>/checkpoints`` (a standard TF checkpoint directory)::

    ckpt-12.index, ckpt-12.data-00000-of-00001   written by tf.train.CheckpointManager
    ckpt-10.milestone                            ckpt-10 is an epoch milestone: retention keeps it
    ckpt-12.commit.json                          manifest (step, files, sizes, CRC32), written LAST
    checkpoint                                   TF state file, rewritten to name committed ones only
    ckpt-9.corrupt.json                          a checkpoint that failed verification, set aside

A checkpoint counts only once its commit marker exists, so a crash at any
moment leaves at worst an uncommitted checkpoint that the next start deletes.
Numbers only grow and a save never overwrites an existing checkpoint.

TF always writes to a local directory: the run's own ``checkpoints`` folder
for local runs, a staging folder for remote ones (``gs://``, ``s3://``, any
fsspec URL). For remote runs a single background thread uploads the files,
then the marker, so training is blocked only for the local write.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zlib
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from ..storage import Storage, StorageError, atomic_write
from ..storage.worker import LatestOnlyWorker
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


class CheckpointError(RuntimeError):
    """No checkpoint can be used although the run has some."""


class IncompatibleCheckpoint(CheckpointError):
    """The checkpoint holds a different model; restoring would be partial."""


class CorruptCheckpoint(CheckpointError):
    pass


def crc32_of(path: str) -> int:
    crc = 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            crc = zlib.crc32(chunk, crc)
    return crc


def checkpoint_key(group: str, var_path: str) -> str:
    """The key tf.train.Checkpoint gives a variable stored as ``{group: {var_path: var}}``."""
    escaped = var_path.replace(".", "..").replace("/", ".S")
    return f"{group}/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass
class SaveStats:
    """Timings the benchmarks and the closing log line report."""
    blocked_s: list = field(default_factory=list)   # training loop stalled per save
    write_s: list = field(default_factory=list)     # background TF write + commit
    upload_s: list = field(default_factory=list)


class CheckpointWriteError(CheckpointError):
    """A background write failed (e.g. disk full); earlier checkpoints are intact."""


def _value(var):
    """The tf.Variable behind a Keras variable (or the variable itself)."""
    return getattr(var, "value", var) if not isinstance(var, tf.Variable) else var


def _shadow(var, on_device: bool) -> tf.Variable:
    """A plain variable to copy ``var`` into (made without reading ``var``: under
    MultiWorkerMirroredStrategy reading a metric's total is a collective). In host memory
    unless ``on_device``: on a GPU, a copy beside the variables would take as much
    accelerator memory again as the model and optimizer state."""
    dtype = tf.as_dtype(var.dtype)
    with tf.device(_primary_device(var) if on_device else HOST):
        initial = "" if dtype == tf.string else tf.zeros(var.shape, dtype)
        return tf.Variable(initial, trainable=False, dtype=dtype)


HOST = "/device:CPU:0"
REPLICA_PARTS = "replica_parts"  # a checkpoint group: each replica's own value of the variables below
OPTIONAL_GROUPS = ("data", "callbacks")  # groups an older checkpoint may lack: their variables start afresh


def _part(key: str, replica: int) -> str:
    return f"{key}#{replica}"


def _kept_apart(var) -> bool:
    """A variable whose replicas hold different values: a metric's running total (summed on
    read), or a non-trainable variable each replica updates alone (BatchNormalization's moving
    statistics). tf.distribute checkpoints one value for it, the sum or the first replica's."""
    if not isinstance(var, tf.distribute.DistributedValues):
        return False
    if getattr(var, "synchronization", None) == tf.VariableSynchronization.ON_READ:
        return True
    return not var.trainable and getattr(var, "aggregation", None) == tf.VariableAggregation.NONE


def _summed(var) -> bool:
    return getattr(var, "aggregation", None) == tf.VariableAggregation.SUM


def _replica_parts(apart) -> dict:
    """Each replica's own value of the variables kept apart, when this process holds every
    replica (one process, MirroredStrategy); saved beside what tf.distribute saves."""
    return {_part(key, r): component for key, var in apart
            if len(var.values) == var.distribute_strategy.num_replicas_in_sync
            for r, component in enumerate(var.values)}


def _primary_device(var) -> str:
    """Where ``var`` (its first replica's copy, for a mirrored one) lives."""
    value = _value(var)
    primary = getattr(value, "primary", value)
    return primary.device


class CheckpointStore:
    """Saves are snapshots: the training loop only copies the variables into a
    shadow set (in host memory unless ``on_device``); a single writer thread writes that snapshot with
    CheckpointManager, commits it and, for remote runs, uploads it.

    With ``writes=False`` (a worker that is not the chief) a save is only the
    snapshot, which every worker must take part in (it reads mirrored and
    summed variables collectively); restoring reads the chief's checkpoints,
    downloading a remote run's into ``local_dir``, a folder of its own."""

    def __init__(self, groups: dict[str, dict], storage: Storage, local_dir: str, max_to_keep: int,
                 writes: bool = True, on_device: bool = False, holds_replica_zero: bool = True):
        self.storage = storage          # the run directory
        self.local_dir = local_dir      # where TF writes
        self.max_to_keep = max_to_keep
        self.writes = writes
        self.stats = SaveStats()
        self.checkpoint = tf.train.Checkpoint(**groups)  # restores into the live variables
        self.expected_shapes = {checkpoint_key(g, p): tuple(v.shape)
                                for g, vs in groups.items() for p, v in vs.items()}
        self._apart = [(checkpoint_key(g, p), _value(v)) for g, vs in groups.items() for p, v in vs.items()
                       if _kept_apart(_value(v))]
        self._holds_replica_zero = holds_replica_zero
        parts = _replica_parts(self._apart)
        saved = {**groups, REPLICA_PARTS: parts} if parts else groups
        shadow = {g: {p: _shadow(v, on_device) for p, v in vs.items()} for g, vs in saved.items()}
        pairs = [(shadow[g][p], _value(v)) for g, vs in saved.items() for p, v in vs.items()]
        self.snapshot_variables = [copy for copy, _ in pairs]  # where a save's copy lives

        @tf.function
        def snapshot():  # one graph call instead of hundreds of eager assigns
            for copy, live in pairs:
                copy.assign(live)
        self._snapshot = snapshot
        self.uploader = self.writer = self.manager = None
        if storage.is_remote or writes:
            os.makedirs(local_dir, exist_ok=True)
        self._last_number = max(self._all_numbers(), default=0)
        if not writes:
            return
        self._repair_state_file()
        self.manager = tf.train.CheckpointManager(tf.train.Checkpoint(**shadow), local_dir,
                                                  max_to_keep=None, checkpoint_name="ckpt")
        self.uploader = _Uploader(self) if storage.is_remote else None
        self.writer = _Writer(self)

    # ----------------------------------------------------------------- listing
    def _local_names(self) -> list[str]:
        try:
            return os.listdir(self.local_dir)
        except FileNotFoundError:  # a reader's view of a run with no checkpoint yet
            return []

    def _remote_names(self) -> list[str]:
        return self.storage.listdir(DIR) if self.storage.is_remote else []

    def _all_numbers(self) -> set[int]:
        names = self._local_names() + self._remote_names()
        return {n for n in map(number_of, names) if n is not None}

    # ----------------------------------------------------------------- saving
    def save(self, meta: dict) -> int:
        """Snapshot the variables and hand them to the writer; returns the checkpoint number."""
        started = time.perf_counter()
        if self.writer:
            self.writer.wait_idle()  # the writer has finished reading the shadow set
            self.writer.raise_error()
        self._snapshot()
        self._last_number += 1
        if self.writer:
            self.writer.submit((self._last_number, meta))
        self.stats.blocked_s.append(time.perf_counter() - started)
        return self._last_number

    def flush(self, timeout_s: float) -> bool:
        """Wait until every save is committed (and uploaded, for remote runs)."""
        if not self.writer:
            return True
        deadline = time.monotonic() + timeout_s
        self.writer.wait_idle(timeout_s)
        self.writer.raise_error()
        if not self.uploader:
            return self.writer.idle()
        self.uploader.retry_now()
        return self.uploader.wait_idle(max(0.0, deadline - time.monotonic()))

    def close(self) -> None:
        if not self.writer:
            return
        self.writer.stop(join_s=10.0)  # a local write in progress is worth finishing
        if self.uploader:
            self.uploader.stop()

    def _write_and_commit(self, number: int, meta: dict) -> dict:
        """Writer thread: TF write of the snapshot, fsync, manifest (the commit), pruning."""
        prefix = self.manager.save(checkpoint_number=number)
        if meta.get("milestone"):  # a name retention can see without reading manifests
            _atomic_write(os.path.join(self.local_dir, f"ckpt-{number}{MILESTONE}"),
                          json.dumps({"epoch": meta.get("epoch")}))
        manifest = {"number": number, "prefix": os.path.basename(prefix), "time": time.time(),
                    **meta, "files": {}}
        for name in sorted(os.listdir(self.local_dir)):
            if name.startswith(os.path.basename(prefix) + ".") and not name.endswith(".json"):
                path = os.path.join(self.local_dir, name)
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
                manifest["files"][name] = {"size": os.path.getsize(path), "crc32": crc32_of(path)}
        _atomic_write(os.path.join(self.local_dir, f"ckpt-{number}{MARKER}"),
                      json.dumps(manifest, indent=1))
        self._write_state_file()
        return manifest

    def _discard(self, number: int) -> None:
        """Remove the files of a checkpoint whose write failed."""
        for name in self._local_names():
            if number_of(name) == number:
                _remove(os.path.join(self.local_dir, name))

    def _upload(self, number: int, manifest: dict) -> None:
        storage = self.storage
        for name in manifest["files"]:
            storage.upload(os.path.join(self.local_dir, name), f"{DIR}/{name}")
        storage.write_text(f"{DIR}/ckpt-{number}{MARKER}", json.dumps(manifest, indent=1))
        names = storage.listdir(DIR)
        storage.write_text(f"{DIR}/{STATE_FILE}", state_file_text(committed(names)))
        for name in to_prune(names, self.max_to_keep):
            storage.delete(f"{DIR}/{name}")

    def _write_state_file(self) -> None:
        done = committed(self._local_names())
        if done:
            _atomic_write(os.path.join(self.local_dir, STATE_FILE), state_file_text(done))

    def _repair_state_file(self) -> None:
        """Rebuild a garbage ``checkpoint`` file from the markers, which are the truth."""
        path = os.path.join(self.local_dir, STATE_FILE)
        if not os.path.exists(path):
            return
        if tf.train.get_checkpoint_state(self.local_dir) is None:  # TF returns None on parse errors
            log.warning("%s is unreadable; rebuilding it from the commit markers", path)
            os.remove(path)
            self._write_state_file()

    def _prune_local(self, keep_also=()) -> None:
        for name in to_prune(self._local_names(), self.max_to_keep, keep_also):
            _remove(os.path.join(self.local_dir, name))

    @property
    def last_number(self) -> int:
        return self._last_number

    def follow(self, last_number: int) -> None:
        """A reader numbers its snapshots like the chief (whose listing may differ from ours)."""
        self._last_number = last_number

    def cleanup_stale(self) -> None:
        """At start: delete leftovers of uncommitted checkpoints, here and remotely."""
        stale = leftovers(self._local_names())
        if stale:
            log.warning("removing %d leftover file(s) of uncommitted checkpoints: %s",
                        len(stale), ", ".join(stale[:6]))
            for name in stale:
                _remove(os.path.join(self.local_dir, name))
        if self.storage.is_remote:
            remote_stale = leftovers(self.storage.listdir(DIR))
            if remote_stale:
                log.warning("removing %d leftover object(s) of unfinished uploads from %s: %s",
                            len(remote_stale), self.storage.url(DIR), ", ".join(remote_stale[:6]))
                for name in remote_stale:
                    self.storage.delete(f"{DIR}/{name}")
        self._write_state_file()

    # ----------------------------------------------------------------- restoring
    def newest_usable(self) -> dict | None:
        """The manifest of the newest committed checkpoint that verifies (nothing is restored).

        Corrupt checkpoints are set aside with a warning and the previous one is
        tried. None only when the run has no committed checkpoint at all.
        """
        in_bucket = set(committed(self._remote_names()))
        candidates = sorted(set(committed(self._local_names())) | in_bucket, reverse=True)
        for number in candidates:
            try:
                manifest = self._verify(number)
                if self.uploader and number not in in_bucket:
                    # never reached the bucket (killed, or the store was down): upload it now, so
                    # that a run with nothing left to train still ends with it in the bucket
                    log.info("ckpt-%d is committed in %s but not in %s; uploading it", number,
                             self.local_dir, self.storage.url(DIR))
                    self.uploader.submit((number, manifest))
                return manifest
            except CorruptCheckpoint as exc:
                log.warning("checkpoint ckpt-%d is unusable: %s; setting it aside and "
                            "falling back to the previous one", number, exc)
                self._set_aside(number, str(exc))
        if candidates:
            raise CheckpointError(
                f"none of the {len(candidates)} committed checkpoint(s) in "
                f"{self.storage.url(DIR)} could be restored (see the warnings above); "
                "nothing was overwritten. Start a new run with another --run-dir, or "
                "--fresh to archive this one and start over")
        return None

    def _verify(self, number: int) -> dict:
        """Fetch (remote), check sizes, CRC32 and the variables' names and shapes; the manifest."""
        manifest = self._fetch_and_verify(number)
        self._check_compatible(os.path.join(self.local_dir, manifest["prefix"]), number)
        return manifest

    def restore(self, number: int) -> dict:
        """Verify and restore committed checkpoint ``number`` (no fallback); its manifest.
        CorruptCheckpoint if it fails verification, IncompatibleCheckpoint for another model.
        Under MultiWorkerMirroredStrategy restoring is collective: every worker calls it."""
        manifest = self._verify(number)
        prefix = os.path.join(self.local_dir, manifest["prefix"])
        self.checkpoint.restore(prefix).expect_partial()
        self._restore_parts(prefix)
        return manifest

    def _restore_parts(self, prefix: str) -> None:
        """Give each replica back its own value of the variables kept apart, so that a resumed
        run's replicas go on exactly as the uninterrupted run's: a resumed epoch adds up its
        metrics in the same order, each replica evaluates with its own moving statistics.
        tf.distribute restores the saved value on every replica (a sum divided by the replica
        count). Where the parts were saved with another replica count, or live in other
        processes, a sum goes whole to replica 0 (the total is kept, not its last bits) and
        the rest is left as tf.distribute restored it."""
        if not self._apart:
            return
        reader = tf.train.load_checkpoint(prefix)
        for key, var in self._apart:
            parts = [checkpoint_key(REPLICA_PARTS, _part(key, r)) for r in range(len(var.values) + 1)]
            if all(reader.has_tensor(k) for k in parts[:-1]) and not reader.has_tensor(parts[-1]):
                values = [reader.get_tensor(k) for k in parts[:-1]]
            elif _summed(var):
                total = reader.get_tensor(key)
                values = [total if i == 0 and self._holds_replica_zero else np.zeros_like(total)
                          for i in range(len(var.values))]
            else:
                continue
            for component, value in zip(var.values, values):
                component.assign(value)

    def _read_manifest(self, number: int) -> dict:
        name = f"ckpt-{number}{MARKER}"
        local = os.path.join(self.local_dir, name)
        try:
            if os.path.exists(local):
                with open(local) as fh:
                    text = fh.read()
            else:
                text = self.storage.read_text(f"{DIR}/{name}")
            manifest = json.loads(text)
            manifest["files"], manifest["prefix"]
            return manifest
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpoint(f"commit marker {name} is damaged ({exc})") from exc

    def _fetch_and_verify(self, number: int) -> dict:
        manifest = self._read_manifest(number)
        for name, info in manifest["files"].items():
            path = os.path.join(self.local_dir, name)
            if not self._matches(path, info) and self.storage.is_remote:
                try:
                    self.storage.download(f"{DIR}/{name}", path)
                except FileNotFoundError:
                    raise CorruptCheckpoint(f"{name} is listed in the manifest but missing") from None
            if not os.path.exists(path):
                raise CorruptCheckpoint(f"{name} is listed in the manifest but missing")
            size = os.path.getsize(path)
            if size != info["size"]:
                raise CorruptCheckpoint(f"{name} has {size} bytes, manifest says {info['size']} (truncated?)")
            if crc32_of(path) != info["crc32"]:
                raise CorruptCheckpoint(f"{name} fails its CRC32 check (bit rot or a partial write)")
        if not self.storage.is_remote:
            return manifest
        local_marker = os.path.join(self.local_dir, f"ckpt-{number}{MARKER}")
        if not os.path.exists(local_marker):
            _atomic_write(local_marker, json.dumps(manifest, indent=1))
        return manifest

    @staticmethod
    def _matches(path: str, info: dict) -> bool:
        return (os.path.exists(path) and os.path.getsize(path) == info["size"]
                and crc32_of(path) == info["crc32"])

    def _check_compatible(self, prefix: str, number: int) -> None:
        try:
            stored = dict(tf.train.list_variables(prefix))
        except (tf.errors.OpError, ValueError) as exc:
            raise CorruptCheckpoint(f"its index cannot be read ({str(exc).splitlines()[0][:160]})") from exc
        missing = [k for k in self.expected_shapes if k not in stored and k.split("/")[0] not in OPTIONAL_GROUPS]
        wrong = [k for k, shape in self.expected_shapes.items()
                 if k in stored and tuple(stored[k]) != tuple(shape)]
        extra = [k for k in stored if k.startswith("model/") and k not in self.expected_shapes]
        if missing or wrong or extra:
            detail = "; ".join(f"{label}: {', '.join(_short(k) for k in keys[:3])}"
                               + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                               for label, keys in (("missing", missing), ("different shape", wrong),
                                                   ("unexpected", extra)) if keys)
            raise IncompatibleCheckpoint(
                f"checkpoint ckpt-{number} in {self.storage.url(DIR)} was written by a different "
                f"model ({detail}); nothing was restored. Use the architecture flags of that run, "
                "another --run-dir, or --fresh to archive it and start over")

    def _set_aside(self, number: int, reason: str) -> None:
        """Replace the commit marker by a corrupt marker (written first), here and remotely."""
        record = json.dumps({"number": number, "reason": reason, "time": time.time()})
        _atomic_write(os.path.join(self.local_dir, f"ckpt-{number}{CORRUPT}"), record)
        _remove(os.path.join(self.local_dir, f"ckpt-{number}{MARKER}"))
        if self.storage.is_remote:
            try:
                self.storage.write_text(f"{DIR}/ckpt-{number}{CORRUPT}", record)
                self.storage.delete(f"{DIR}/ckpt-{number}{MARKER}")
            except StorageError as exc:
                log.warning("could not set ckpt-%d aside remotely: %s", number, exc)


class _Writer(LatestOnlyWorker):
    """Writes each snapshot with CheckpointManager and commits it; a failed write
    (disk full) is reported to the training loop at its next save or flush."""

    def __init__(self, store: CheckpointStore):
        self.store = store
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
            manifest = self.store._write_and_commit(number, meta)
        except Exception as exc:  # disk full, permissions, ...: reported to the training loop
            self.store._discard(number)
            good = committed(self.store._local_names())
            self.error = CheckpointWriteError(
                f"writing ckpt-{number} to {self.store.local_dir} failed: {exc}; the earlier checkpoint "
                f"{'ckpt-%d' % good[0] if good else '(none)'} is intact. Free space or fix the folder, then "
                "re-run the same command to resume")
            self._done()
            return
        self.store.stats.write_s.append(time.perf_counter() - started)
        uploader = self.store.uploader
        if uploader:
            uploader.submit((number, manifest))
        self.store._prune_local(keep_also=uploader.numbers() if uploader else ())
        self._done()


class _Uploader(LatestOnlyWorker):
    """Mirrors committed local checkpoints to the run URL: files first, marker last.

    Only the newest waiting commit is uploaded (an older one is superseded),
    so the same files are never uploaded twice concurrently. It runs apart
    from the writer: a hanging or failing store never blocks training. A
    failure keeps the local copy, warns, and retries with backoff.
    """

    RETRY_S = (1, 2, 5, 10, 30)

    def __init__(self, store: CheckpointStore):
        self.store = store
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
        storage = self.store.storage
        started = time.perf_counter()
        try:
            self.store._upload(number, manifest)
        except (StorageError, OSError) as exc:
            log.warning("upload of ckpt-%d to %s failed (%s); the local copy is kept and the "
                        "upload will be retried", number, storage.url(DIR), exc)
            delay = self.RETRY_S[min(self._failures, len(self.RETRY_S) - 1)]
            self._failures += 1
            self._done(retry_item=item)
            with self._cond:  # back off, unless asked to flush or a newer commit arrives
                self._cond.wait(delay)
            return
        self._failures = 0
        self.store.stats.upload_s.append(time.perf_counter() - started)
        log.info("ckpt-%d committed to %s in %.2fs", number, storage.url(DIR), time.perf_counter() - started)
        self._done()


def _short(key: str) -> str:
    return key.split("/")[1].replace(".S", "/").replace("..", ".") if "/" in key else key


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
