"""Each worker reads only its share of a streamed pipeline: logical shards of its files.

A plain ``tf.data`` pipeline that starts from a list of files is split into ``L``
logical shards by TensorFlow's own FILE auto-shard rewrite (the one
``experimental_distribute_dataset`` applies for its workers, here with ``L``
shards): shard ``k`` reads files ``k, k + L, ...`` and nothing else. ``L`` is
fixed when the run starts and kept in every checkpoint. A job that writes its
pipeline as a function of a ``tf.distribute.InputContext`` (what
``distribute_datasets_from_function`` takes) has each shard made by that
function instead, as input pipeline ``k`` of ``L``.

Every step takes from every shard its *micro-batch*, the global batch ``B``
split ``L`` ways (sizes as even as possible, as :class:`~.sources.Replicas`
splits a batch among replicas), so a global batch keeps its size. Worker ``w``
of ``W`` owns the contiguous block of ``L / W`` shards starting at
``w * L / W``, iterates only those, and concatenates their micro-batches into
its local batch, which its replicas split, all inside the loop's compiled
step. A shard's passes follow one another in its one iterator (the remainder is
carried: an epoch is always the pipeline's number of batches, and every record
is trained once per pass of its shard); pass ``p`` of shard ``k`` is shuffled
by seeds of its own (``pass_graph``), so it is the same in every run.

Each shard has its own iterator, so its state (TensorFlow's iterator
checkpoint: position, shuffle buffer) and its position (passes begun,
micro-batches taken) are its own. At every save the workers gather
them to the chief, which writes all ``L`` under the same commit marker as the
weights: a commit has every shard or does not exist. A resume with any worker
count that divides ``L`` gives each worker its block of shards and restores
them, so every record of a pass is trained exactly once (in another order
than the uninterrupted run's, which took the shards' micro-batches in other
batches).
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass

import tensorflow as tf

from .pass_graph import PassGraphError, PassPipeline
from .pipeline_graph import Verdict, checkpointable, first_line
from .shard_plan import (
    UNKNOWN_LENGTH,
    Layout,
    Split,
    Workers,
    batch_size_of,
    chain,
    choose_count,
    inspect,
    resume_layout,
)
from .sources import DataError, Replicas, in_step, share

log = logging.getLogger("trainer")

MAGIC = b"trainer-shards/1\n"  # how a checkpoint's iterator state says it holds logical shards

_PASS_THROUGH = ("_OptionsDataset", "_AssertCardinalityDataset", "_PrefetchDataset")  # (after a batch)
_PREFETCH_MICRO_BATCHES = 2
# A shard's iterator as written, in every process: TensorFlow's default rewrites (a map made parallel, ...)
# depend on the process's settings (op determinism), and a state saved by one shape restores only into it.
_AS_WRITTEN = tf.data.Options()
_AS_WRITTEN.autotune.enabled = False
_AS_WRITTEN.experimental_optimization.apply_default_optimizations = False


@dataclass(frozen=True)
class Position:
    """Where a shard is: passes begun, micro-batches taken in the current pass."""
    passes: int = 0
    taken: int = 0


class Shard:
    """One logical shard: every pass of its pipeline (the job's, FILE-sharded, in micro-batches)
    in one iterator (see ``pass_graph``), each micro-batch tagged with its pass and number."""

    def __init__(self, index: int, dataset: tf.data.Dataset, shards: int):
        self.index = index
        self.pipeline = PassPipeline(dataset, index, shards)
        self.iterator = None

    def open(self, position: Position = Position(), saved: bytes = b"") -> None:
        """The iterator at ``position``: the saved one, or (none saved) a new one past ``taken``
        micro-batches of pass ``passes`` (each pass the same every time: nothing else to place)."""
        if saved:
            self.iterator = iter(self._passes(0, 0))
            self.iterator._restore_from_tensors({"_STATE": tf.io.parse_tensor(saved, tf.variant)})
        else:
            self.iterator = iter(self._passes(max(position.passes - 1, 0), position.taken if position.passes else 0))

    def _passes(self, first: int, skip: int) -> tf.data.Dataset:
        empty = in_step(f"logical shard {self.index} of the streamed pipeline has no records (its files are "
                        "empty); use fewer --data-shards, or remove the empty files")
        passes = self.pipeline.passes(first, skip, empty).prefetch(_PREFETCH_MICRO_BATCHES)  # (across passes' ends)
        return passes.with_options(_AS_WRITTEN)

    def state(self, saves: bool) -> bytes:
        if not saves:
            return b""
        return tf.io.serialize_tensor(self.iterator._serialize_to_tensors()["_STATE"]).numpy()


def pipeline_shards(make, layout: Layout) -> dict[int, tf.data.Dataset]:
    """This worker's shards from the job's function of a ``tf.distribute.InputContext``, as
    ``distribute_datasets_from_function`` calls it: one input pipeline per logical shard, each
    with one replica's share of the batch, so that ``get_per_replica_batch_size`` gives the
    micro-batch and ``shard(num_input_pipelines, input_pipeline_id)`` the shard."""
    return {k: checkpointable(without_autotune(make(tf.distribute.InputContext(layout.shards, k, layout.shards))))[0]
            for k in layout.owned()}


def shard_datasets(stream: tf.data.Dataset, layout: Layout) -> dict[int, tf.data.Dataset]:
    """This worker's shards of ``stream``: TensorFlow's FILE auto-shard rewrite into
    ``layout.shards``, in micro-batches. Where only ``prefetch`` (or options, or
    ``assert_cardinality``) follows the pipeline's ``batch``, each shard batches the
    examples below it in its micro-batch, so that a shard reads ahead no more than a few
    micro-batches; otherwise the shard's batches are cut into micro-batches."""
    from tensorflow.python.data.experimental.ops.distribute import _AutoShardDataset
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    examples = _examples_below_batch(stream)
    source = (examples if examples is not None else stream).with_options(stream.options()).with_options(options)
    source = without_autotune(source)

    def micro_batches(shard: tf.data.Dataset, size: int) -> tf.data.Dataset:
        if examples is not None:
            return shard.batch(size).prefetch(_PREFETCH_MICRO_BATCHES)
        return shard.unbatch().batch(size)  # (a short batch at a pass's end does not shift the next pass's)
    return {k: micro_batches(_AutoShardDataset(source, layout.shards, k), layout.micro(k)) for k in layout.owned()}


def without_autotune(dataset: tf.data.Dataset) -> tf.data.Dataset:
    """``dataset`` with tf.data's autotuning off: a process holds many shards' iterators, and fixed
    parallelism keeps their threads bounded (autotuning gained nothing measurable there);
    parallelism given as AUTOTUNE then uses the machine's cores."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.with_options(options)


def _examples_below_batch(dataset: tf.data.Dataset) -> tf.data.Dataset | None:
    """The examples the pipeline's last ``batch`` reads, where nothing after it changes them."""
    for node in chain(dataset):
        name = type(node).__name__
        if name in ("_BatchDataset", "_ParallelBatchDataset"):
            return node._input_dataset
        if name not in _PASS_THROUGH:
            return None
    return None


class ShardedReader:
    """This worker's logical shards, read in step: each ``next`` is the local batch (its shards'
    micro-batches, in shard order), split among its replicas. ``next`` runs inside the loop's
    compiled step as well as eagerly; where each shard is (its micro-batch's pass and number)
    goes into a table in the same call, for the saves to read."""

    def __init__(self, stream: tf.data.Dataset, layout: Layout, verdict: Verdict, what: str,
                 strategy: tf.distribute.Strategy | None, first_replica: int, per_pipeline=None):
        self.layout, self.verdict, self.what = layout, verdict, what
        made = pipeline_shards(per_pipeline, layout) if per_pipeline else shard_datasets(stream, layout)
        self.shards = [Shard(k, dataset, layout.shards) for k, dataset in made.items()]
        self._checks_sizes = per_pipeline is not None  # (the job's function batches as it was asked, or not)
        self.strategy, self.first_replica = strategy, first_replica
        local = len(strategy.extended.worker_devices) if strategy is not None and \
            strategy.num_replicas_in_sync > 1 else 1
        self.replicas = Replicas(total=local)
        # (not a variable: a strategy would mirror it) shard -> [passes begun, taken]; _RECORDS -> [records read, 0]
        self._table = tf.lookup.experimental.MutableHashTable(tf.int64, tf.int64, tf.constant([0, 0], tf.int64))
        self._keys = tf.constant([s.index for s in self.shards], tf.int64)

    def open(self) -> None:
        for shard in self.shards:
            shard.open()

    def __iter__(self):
        return self

    def parts(self) -> list:
        """Each shard's micro-batch of the next step, in shard order (where each shard is, noted)."""
        elements = [next(shard.iterator) for shard in self.shards]
        self._table.insert(self._keys, tf.stack([tf.stack([p + 1, i + 1]) for p, i, _ in elements]))
        parts = [part for _, _, part in elements]
        if self._checks_sizes:
            self._check_sizes(parts)
        return parts

    def __next__(self):
        parts = self.parts()
        batch = parts[0] if len(parts) == 1 else tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *parts)
        read = self._table.lookup(tf.constant([_RECORDS], tf.int64))[0, 0]
        self._table.insert(tf.constant([_RECORDS], tf.int64), [tf.stack(
            [read + tf.shape(tf.nest.flatten(batch)[0], tf.int64)[0], tf.constant(0, tf.int64)])])
        if self.replicas.total == 1 and (self.strategy is None or self.strategy.num_replicas_in_sync == 1):
            return batch
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: share(batch, self.replicas, context.replica_id_in_sync_group - self.first_replica))

    def _check_sizes(self, parts) -> None:
        for shard, part in zip(self.shards, parts):
            size, micro = tf.shape(tf.nest.flatten(part)[0])[0], self.layout.micro(shard.index)
            message = (f"{self.what}: input pipeline {shard.index} of {self.layout.shards} gave a batch of more than "
                       f"its share ({micro}) of the global batch of {self.layout.batch}; batch it with "
                       "input_context.get_per_replica_batch_size(global_batch_size)")
            if tf.executing_eagerly() and int(size) > micro:
                raise DataError(message.replace("more than", f"{int(size)}, more than"))
            tf.debugging.assert_less_equal(size, micro, message=in_step(message))

    def positions(self) -> dict[int, Position]:
        """Where each of this worker's shards is: passes begun, micro-batches taken in the last."""
        found = self._table.lookup(self._keys).numpy()
        return {shard.index: Position(int(p), int(t)) for shard, (p, t) in zip(self.shards, found)}

    @property
    def records(self) -> int:
        """Examples this process read of its shards (see share)."""
        return int(self._table.lookup(tf.constant([_RECORDS], tf.int64))[0, 0])

    def share(self) -> str:
        """What this process read, in words (``trainer verify`` reads each worker's share from it)."""
        return (f"worker {self.layout.index} read {self.records} records of its share of {self.what} "
                f"(shards {_span(self.layout.owned())} of {self.layout.shards})")

    # -- saving and restoring -------------------------------------------------
    def mine(self) -> bytes:
        """This worker's shards' positions and states, for the chief to gather. An op that cannot
        save its state refuses only here: the shards then resume by skipping, with a warning."""
        positions = self.positions()
        header = {str(k): [p.passes, p.taken] for k, p in positions.items()}
        try:
            states = [s.state(self.verdict.reason is None) for s in self.shards]
        except tf.errors.OpError as exc:
            self.verdict = Verdict(first_line(exc))
            log.warning("%s: the state of its logical shards cannot be saved (%s); a resume skips within each "
                        "shard, which is exact only if the pipeline yields the same records every time",
                        self.what, self.verdict.reason)
            states = [b""] * len(self.shards)
        return _pack([json.dumps(header).encode(), *states])

    def restore(self, record: dict) -> None:
        """This worker's shards where ``record`` (:func:`unpack`) has them."""
        positions, states = record["positions"], record["states"]
        for shard in self.shards:
            try:
                shard.open(positions[shard.index], states[shard.index])
            except (tf.errors.OpError, ValueError) as exc:
                raise DataError(f"{self.what}: the checkpoint's state of logical shard {shard.index} does not fit "
                                f"this pipeline ({first_line(exc)}); was the dataset changed? Restore the "
                                "pipeline of the run, or start over with --fresh") from exc
        self._table.insert(self._keys, tf.constant([[positions[s.index].passes, positions[s.index].taken]
                                                    for s in self.shards], tf.int64))


_RECORDS = -1  # (the table's key of the records read)


def open_reader(stream: tf.data.Dataset, verdict: Verdict, what: str, workers: Workers, strategy,
                saved: bytes, begins: bool, known_length: bool, at: tuple[int, int],
                per_pipeline=None) -> ShardedReader | None:
    """This worker's logical shards: restored where the checkpoint (``saved``) holds shards; new
    where the run ``begins`` reading (its start; with data of unknown length, read whole in the
    first epoch, the second epoch's) with sharding asked for (several workers, or --data-shards)
    and a pipeline that can be split; else None: the global stream (a run that began reading it
    keeps reading it). ``per_pipeline``: the job's function of an InputContext, which makes each
    shard's pipeline (``stream`` is then what it made for one pipeline: the global stream)."""
    def reader(layout: Layout) -> ShardedReader:
        return ShardedReader(stream, layout, verdict, what, strategy, workers.first_replica, per_pipeline)
    if saved and is_sharded(saved):
        record = unpack(saved)
        if batch_size_of(stream) != record["batch"]:
            raise DataError(f"{what}: the checkpoint's pipeline has batches of {record['batch']}, this one of "
                            f"{batch_size_of(stream)}; restore the pipeline of the run, or start over with --fresh")
        if workers.requested not in (None, record["shards"]):
            log.warning("--data-shards %d is ignored: the run reads %d logical shards, fixed when it started",
                        workers.requested, record["shards"])
        layout = resume_layout(record, workers.count, workers.index)
        try:
            restored = reader(layout)
        except PassGraphError as exc:
            raise DataError(f"{what}: the checkpoint holds logical shards, but this pipeline cannot be read in "
                            f"them: {exc}; restore the pipeline of the run, or start over with --fresh") from exc
        restored.restore(record)
        log.info("restored logical shards %s of %d of %s at epoch %d step %d (nothing skipped)",
                 _span(layout.owned()), layout.shards, what, at[0] + 1, at[1])
        return restored
    if not begins or not workers.shards_new_runs() or (saved and at == (0, 0)):
        return None
    split = inspect(stream, verdict, per_pipeline is not None, known_length)
    shards, reason = _new_count(split, workers, per_pipeline is not None)
    if reason is None:
        layout = Layout(shards, split.batch, workers.count, workers.index)
        try:
            new = reader(layout)
        except PassGraphError as exc:
            reason = str(exc)
    if reason is not None:
        log.warning("%s cannot be read in logical shards, so every worker reads it whole (%s)", what, reason)
        return None
    if split.reason == UNKNOWN_LENGTH:  # (checked whole: it will be split where the second epoch begins)
        log.warning("%s is read whole by every worker in its first epoch: its length is unknown until its first "
                    "pass ends, and every worker must end an epoch at the same step; from the second epoch on each "
                    "worker reads only its share (dataset.apply(tf.data.experimental.assert_cardinality(N)) states "
                    "the length beforehand: shards from the first step)", what)
        return None
    new.open()
    source = "input pipelines of the job's function" if per_pipeline else f"logical shards of its {split.files} files"
    log.info("reading %s in %d %s; this worker reads shards %s", what, shards, source, _span(layout.owned()))
    return new


def _new_count(split: Split, workers: Workers, per_pipeline: bool) -> tuple[int, str | None]:
    """(the logical shards of a new run, or why there can be none). A pipeline of unknown length
    gets its count now, so that a run which will not split it says so at its start."""
    if split.reason is not None and split.reason != UNKNOWN_LENGTH:
        return 0, split.reason
    shards = choose_count(workers.requested, split, workers.count, per_pipeline)
    if not shards:
        return 0, (f"its {split.files or 'input'} files and batch of {split.batch} cannot be shared evenly among "
                   f"{workers.count} workers; write the data in at least {workers.count} files")
    return shards, None


def _span(shards: range) -> str:
    return f"{shards[0]}-{shards[-1]}"


def combine(blobs: list[bytes], layout: Layout) -> bytes:
    """Every worker's :meth:`ShardedReader.mine` as one checkpoint value (every shard, or an error)."""
    positions: dict[int, list] = {}
    states: dict[int, bytes] = {}
    for blob in blobs:
        header, *saved = _unpack(blob)
        for (index, position), state in zip(json.loads(header).items(), saved):
            positions[int(index)], states[int(index)] = position, state
    if sorted(positions) != list(range(layout.shards)):
        raise RuntimeError(f"gathered the states of shards {sorted(positions)}, expected 0..{layout.shards - 1}")
    header = {"shards": layout.shards, "batch": layout.batch, "positions": [positions[k] for k in sorted(positions)]}
    return MAGIC + _pack([json.dumps(header).encode(), *(states[k] for k in sorted(states))])


def is_sharded(value: bytes) -> bool:
    return value.startswith(MAGIC)


def unpack(value: bytes) -> dict:
    """A checkpoint value of :func:`combine`: {"shards", "batch", "positions": [Position], "states": [bytes]}."""
    header, *states = _unpack(value[len(MAGIC):])
    record = json.loads(header)
    record["positions"] = [Position(*p) for p in record["positions"]]
    record["states"] = states
    return record


def _pack(items: list[bytes]) -> bytes:
    return tf.io.serialize_tensor(tf.constant(items, tf.string)).numpy()


def _unpack(blob: bytes) -> list[bytes]:
    return [bytes(item) for item in tf.io.parse_tensor(blob, tf.string).numpy()]


