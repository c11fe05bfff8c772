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
its local batch, which its replicas split. A shard whose pass ends starts its
next pass at once (the remainder is carried: an epoch is always the pipeline's
number of batches, and every record is trained once per pass of its shard).

Each shard has its own iterator, so its state (TensorFlow's iterator
checkpoint: position, shuffle buffer, seed state) and its position (passes
begun, micro-batches taken) are its own. At every save the workers gather
them to the chief, which writes all ``L`` under the same commit marker as the
weights: a commit has every shard or does not exist. A resume with any worker
count that divides ``L`` gives each worker its block of shards and restores
them, so every record of a pass is trained exactly once (in another order
than the uninterrupted run's: the shards' shuffles share their seed
generators within a process, and those draw in another order).
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import tensorflow as tf

from .pipeline_graph import Verdict, checkpointable, first_line, restore_seed_generators, seed_generator_states
from .shard_plan import (
    Layout,
    Split,
    Workers,
    batch_size_of,
    chain,
    choose_count,
    inspect,
    resume_layout,
)
from .sources import DataError, Replicas, share

log = logging.getLogger("trainer")

MAGIC = b"trainer-shards/1\n"  # how a checkpoint's iterator state says it holds logical shards

_PASS_THROUGH = ("_OptionsDataset", "_AssertCardinalityDataset", "_PrefetchDataset")  # (after a batch)
_PREFETCH_MICRO_BATCHES = 2
_OPENING_THREADS = 8  # shards whose new pass fills its first micro-batch at once


@dataclass
class Position:
    """Where a shard is: passes begun, micro-batches taken in the current pass."""
    passes: int = 0
    taken: int = 0


@dataclass
class Shard:
    """One logical shard: its pipeline (the job's, FILE-sharded, in micro-batches) and iterator;
    ``shuffles``: the reshuffling shuffles of its own (a pipeline made for it by the job's function)."""
    index: int
    dataset: tf.data.Dataset
    shuffles: tuple = ()
    position: Position = field(default_factory=Position)
    iterator: object = None

    def take(self):
        """The current pass's next micro-batch; None once the pass has ended (or before the first)."""
        if self.iterator is None:
            return None
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.iterator = None
            return None
        self.position.taken += 1
        return batch

    def begin_pass(self) -> None:
        """The next pass's iterator, which draws the pass's shuffle seeds (so: on one thread, in
        shard order, the same in every run)."""
        self.iterator = iter(self.dataset)
        self.position = Position(self.position.passes + 1, 0)

    def first(self):
        """The first micro-batch of the pass just begun."""
        batch = self.take()
        if batch is None:
            raise DataError(f"logical shard {self.index} of the streamed pipeline has no records (its files are "
                            "empty); use fewer --data-shards, or remove the empty files")
        return batch

    def state(self, saves: bool) -> bytes:
        if not saves or self.iterator is None:
            return b""
        return tf.io.serialize_tensor(self.iterator._serialize_to_tensors()["_STATE"]).numpy()

    def restore(self, position: Position, saved: bytes) -> None:
        """Back to ``position``: the saved iterator, or (none saved) a new one past ``taken`` micro-batches."""
        self.position = Position(position.passes, position.taken)
        if position.passes == 0:
            return
        self.iterator = iter(self.dataset)
        if saved:
            self.iterator._restore_from_tensors({"_STATE": tf.io.parse_tensor(saved, tf.variant)})
            return
        for _ in range(position.taken):
            next(self.iterator)


def pipeline_shards(make, layout: Layout) -> list[Shard]:
    """This worker's shards from the job's function of a ``tf.distribute.InputContext``, as
    ``distribute_datasets_from_function`` calls it: one input pipeline per logical shard, each
    with one replica's share of the batch, so that ``get_per_replica_batch_size`` gives the
    micro-batch and ``shard(num_input_pipelines, input_pipeline_id)`` the shard."""
    shards = []
    for k in layout.owned():
        made = make(tf.distribute.InputContext(layout.shards, k, layout.shards))
        dataset, verdict = checkpointable(without_autotune(made))
        shards.append(Shard(k, dataset, verdict.shuffles))
    return shards


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
    """``dataset`` with tf.data's autotuning off. With many shards' iterators alive in one process,
    dropping one at a pass's end waits for its autotuning thread, longer each pass (bench/sharding.py
    shows epochs growing); parallelism given as AUTOTUNE then uses the machine's cores."""
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
    micro-batches, in shard order), split among its replicas. Read eagerly, a step at a time
    (``read_eagerly``): a shard's pass ends and the next one opens in Python, between steps."""

    read_eagerly = True

    def __init__(self, stream: tf.data.Dataset, layout: Layout, verdict: Verdict, what: str,
                 strategy: tf.distribute.Strategy | None, first_replica: int, per_pipeline=None):
        self.layout, self.verdict, self.what = layout, verdict, what
        self.shards = pipeline_shards(per_pipeline, layout) if per_pipeline else \
            [Shard(k, ds) for k, ds in shard_datasets(stream, layout).items()]
        self._checked = per_pipeline is None  # (the job's function is trusted to batch as asked once seen)
        self._shared_shuffles = () if per_pipeline else verdict.shuffles  # (the rewrite's shards share them)
        self.strategy, self.first_replica = strategy, first_replica
        local = len(strategy.extended.worker_devices) if strategy is not None and \
            strategy.num_replicas_in_sync > 1 else 1
        self.replicas = Replicas(total=local)
        self.records = 0  # examples this process read of its shards (see share)
        # Shards with seed generators of their own (made by the job's function) fill their new passes'
        # buffers side by side. Shards of the rewrite share the pipeline's generators, which a new pass
        # draws from lazily, on its first read: those read one after another, in shard order.
        self._opening = map if per_pipeline is None else \
            ThreadPoolExecutor(min(len(self.shards), _OPENING_THREADS), thread_name_prefix="shards").map

    def __iter__(self):
        return self

    def parts(self) -> list:
        """Each shard's micro-batch of the next step, in shard order."""
        parts = [shard.take() for shard in self.shards]
        ended = [k for k, part in enumerate(parts) if part is None]
        for k in ended:
            self.shards[k].begin_pass()
        for k, part in zip(ended, self._opening(lambda k: self.shards[k].first(), ended)):
            parts[k] = part
        return parts

    def __next__(self):
        parts = self.parts()
        if not self._checked:
            self._check_sizes(parts)
        batch = parts[0] if len(parts) == 1 else tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *parts)
        self.records += int(tf.nest.flatten(batch)[0].shape[0])
        if self.replicas.total == 1 and (self.strategy is None or self.strategy.num_replicas_in_sync == 1):
            return batch
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: share(batch, self.replicas, context.replica_id_in_sync_group - self.first_replica))

    def _check_sizes(self, parts) -> None:
        for shard, part in zip(self.shards, parts):
            size = int(tf.shape(tf.nest.flatten(part)[0])[0])
            if size > self.layout.micro(shard.index):
                raise DataError(f"{self.what}: input pipeline {shard.index} of {self.layout.shards} gave a batch of "
                                f"{size}, more than its share of the global batch of {self.layout.batch}; batch it "
                                "with input_context.get_per_replica_batch_size(global_batch_size)")
        self._checked = True

    def share(self) -> str:
        """What this process read, in words (``trainer verify`` reads each worker's share from it)."""
        return (f"worker {self.layout.index} read {self.records} records of its share of {self.what} "
                f"(shards {_span(self.layout.owned())} of {self.layout.shards})")

    # -- saving and restoring -------------------------------------------------
    def mine(self) -> bytes:
        """This worker's shards' positions and states, for the chief to gather. An op that cannot
        save its state refuses only here: the shards then resume by skipping, with a warning."""
        header = {str(s.index): [s.position.passes, s.position.taken] for s in self.shards}
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
        """This worker's shards where ``record`` (:func:`unpack`) has them, the shuffles' seed
        generators where this worker's uninterrupted run had them: one draw per pass begun."""
        positions, states = record["positions"], record["states"]
        exact = self.verdict.reason is None
        begun = sum(positions[s.index].passes for s in self.shards)
        shared = seed_generator_states(self._shared_shuffles, begun) if exact else []
        for shard in self.shards:
            own = seed_generator_states(shard.shuffles, positions[shard.index].passes) if exact else []
            try:
                shard.restore(positions[shard.index], states[shard.index])
            except (tf.errors.OpError, ValueError) as exc:
                raise DataError(f"{self.what}: the checkpoint's state of logical shard {shard.index} does not fit "
                                f"this pipeline ({first_line(exc)}); was the dataset changed? Restore the "
                                "pipeline of the run, or start over with --fresh") from exc
            restore_seed_generators(own)
        restore_seed_generators(shared)


def open_reader(stream: tf.data.Dataset, verdict: Verdict, what: str, workers: Workers, strategy,
                saved: bytes, fresh: bool, at: tuple[int, int], per_pipeline=None) -> ShardedReader | None:
    """This worker's logical shards: restored where the checkpoint (``saved``) holds shards; new
    where a run starts (``fresh``) with sharding asked for (several workers, or --data-shards)
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
        restored = reader(layout)
        restored.restore(record)
        log.info("restored logical shards %s of %d of %s at epoch %d step %d (nothing skipped)",
                 _span(layout.owned()), layout.shards, what, at[0] + 1, at[1])
        return restored
    if saved or not fresh or not workers.shards_new_runs():
        return None
    split = inspect(stream, verdict, per_pipeline is not None)
    shards = choose_count(workers.requested, split, workers.count, per_pipeline is not None) \
        if split.reason is None else 0
    if split.reason is None and not shards:
        split = Split(reason=f"its {split.files or 'input'} files and batch of {split.batch} cannot be shared "
                             f"evenly among {workers.count} workers; write the data in at least {workers.count} "
                             "files")
    if split.reason is not None:
        log.warning("%s cannot be read in logical shards, so every worker reads it whole (%s)", what, split.reason)
        return None
    layout = Layout(shards, split.batch, workers.count, workers.index)
    source = "input pipelines of the job's function" if per_pipeline else f"logical shards of its {split.files} files"
    log.info("reading %s in %d %s; this worker reads shards %s", what, shards, source, _span(layout.owned()))
    return reader(layout)


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


