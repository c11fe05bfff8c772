"""Each worker reads only its share of a streamed pipeline: logical shards of its files.

A plain ``tf.data`` pipeline that starts from a list of files is split into ``L``
logical shards by TensorFlow's own FILE auto-shard rewrite (the one
``experimental_distribute_dataset`` applies for its workers, here with ``L``
shards): shard ``k`` reads files ``k, k + L, ...`` and nothing else. ``L`` is
fixed when the run starts and kept in every checkpoint.

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
from collections.abc import Callable
from dataclasses import dataclass, field

import tensorflow as tf

from ..errors import BAD_INPUT, CHECKPOINT_ERROR, TrainerError
from .pipeline_graph import Verdict, first_line, restore_seed_generators, seed_generator_states
from .sources import DataError, Replicas, share

log = logging.getLogger("trainer")

MAX_DEFAULT_SHARDS = 64  # --data-shards' default: the files, at most this many
MAGIC = b"trainer-shards/1\n"  # how a checkpoint's iterator state says it holds logical shards

_READERS = ("TFRecordDatasetV2", "TextLineDatasetV2", "FixedLengthRecordDatasetV2", "_TFRecordDataset",
            "_TextLineDataset", "_FixedLengthRecordDataset")
_FILE_FANOUTS = ("_InterleaveDataset", "_ParallelInterleaveDataset", "_FlatMapDataset")
_BATCHES = ("_BatchDataset", "_ParallelBatchDataset", "_PaddedBatchDataset")
_PASS_THROUGH = ("_OptionsDataset", "_AssertCardinalityDataset", "_PrefetchDataset")  # (after a batch)
_PREFETCH_MICRO_BATCHES = 2


class ShardCountError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """``--data-shards`` cannot be split among this run's workers (exit code 2)."""


class ResumeShardError(TrainerError, ValueError, exit_code=CHECKPOINT_ERROR):
    """The checkpoint's logical shards cannot be split among this run's workers (exit code 3)."""


@dataclass(frozen=True)
class Workers:
    """This process among the run's workers, and how they read a streamed pipeline."""
    count: int = 1
    index: int = 0
    first_replica: int = 0  # the first of this worker's replicas, in the strategy's numbering
    requested: int | None = None  # --data-shards: None picks, 0 reads the global stream on every worker
    gather: Callable[[bytes], list] = lambda data: [data]  # every worker's bytes, in worker order (a collective)

    def shards_new_runs(self) -> bool:
        return self.requested != 0 and (self.requested is not None or self.count > 1)


@dataclass(frozen=True)
class Layout:
    """``shards`` logical shards of a global batch of ``batch``, ``workers`` workers, this one ``index``."""
    shards: int
    batch: int
    workers: int = 1
    index: int = 0

    def micro(self, shard: int) -> int:
        """Examples shard ``shard`` gives each step."""
        begin, end = Replicas(total=self.shards).bounds(self.batch, shard)
        return end - begin

    def owned(self) -> range:
        per = self.shards // self.workers
        return range(self.index * per, (self.index + 1) * per)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@dataclass(frozen=True)
class Split:
    """What a pipeline offers for sharding: its global batch size and number of files, or why it cannot be split."""
    batch: int | None = None
    files: int | None = None
    reason: str | None = None


def inspect(dataset: tf.data.Dataset, verdict: Verdict) -> Split:
    """Whether ``dataset`` can be read in logical shards of files, from its chain of datasets."""
    if verdict.replay:
        return Split(reason=f"its reshuffling cannot be restored shard by shard ({verdict.reason})")
    if int(dataset.cardinality()) < 1:
        return Split(reason="its length is unknown, and every worker must end an epoch at the same step; "
                            "give it with dataset.apply(tf.data.experimental.assert_cardinality(N))")
    batch, files = _batch_size(dataset), _file_count(dataset)
    if batch is None:
        return Split(reason="it has no batch() with a fixed batch size to split among the shards")
    if files is None:
        return Split(reason="it does not start from a list of files (from_tensor_slices(files) or "
                            "list_files, then interleave or a reader such as TFRecordDataset)")
    return Split(batch=batch, files=files)


def _chain(dataset: tf.data.Dataset):
    """The pipeline's datasets, outermost first, along their first inputs."""
    while dataset is not None:
        yield dataset
        inputs = dataset._inputs()
        dataset = inputs[0] if inputs else None


def _batch_size(dataset) -> int | None:
    for node in _chain(dataset):
        if type(node).__name__ in _BATCHES:
            size = tf.get_static_value(node._batch_size)
            return int(size) if size is not None and size > 0 else None
    return None


def _file_count(dataset) -> int | None:
    for node in _chain(dataset):
        name = type(node).__name__
        if name in _READERS or name in _FILE_FANOUTS:
            files = node._inputs()[0] if node._inputs() else None
            count = int(files.cardinality()) if files is not None else -1
            spec = files.element_spec if files is not None else None
            is_names = isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string and spec.shape.rank == 0
            return count if is_names and count > 0 else None
    return None


def choose_count(requested: int | None, split: Split, workers: int) -> int:
    """The logical shards of a new run: ``requested`` (--data-shards), else the files, at most
    MAX_DEFAULT_SHARDS, rounded down to a multiple of the worker count."""
    most = min(split.files, split.batch)
    if requested is not None:
        if requested > most:
            limit = "files" if split.files <= split.batch else "examples in a batch"
            raise ShardCountError(f"--data-shards {requested}: the pipeline has only {most} {limit} to split; "
                                  f"use at most {most}")
        if requested % workers:
            works = ", ".join(map(str, divisors(requested)))
            raise ShardCountError(f"--data-shards {requested} cannot be split evenly among {workers} workers; "
                                  f"with {requested} logical shards the job can run on {works} workers")
        return requested
    return min(most, MAX_DEFAULT_SHARDS) // workers * workers


@dataclass
class Position:
    """Where a shard is: passes begun, micro-batches taken in the current pass."""
    passes: int = 0
    taken: int = 0


@dataclass
class Shard:
    """One logical shard: its pipeline (the job's, FILE-sharded, re-batched to its micro-batch) and iterator."""
    index: int
    dataset: tf.data.Dataset
    position: Position = field(default_factory=Position)
    iterator: object = None

    def next(self):
        """The shard's next micro-batch; at the end of a pass, the first of the next."""
        for _ in range(2):
            if self.iterator is None:
                self.iterator = iter(self.dataset)
                self.position = Position(self.position.passes + 1, 0)
            try:
                batch = next(self.iterator)
            except StopIteration:
                if self.position.taken == 0:
                    break
                self.iterator = None
                continue
            self.position.taken += 1
            return batch
        raise DataError(f"logical shard {self.index} of the streamed pipeline has no records (its files are "
                        "empty); use fewer --data-shards, or remove the empty files")

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

    def micro_batches(shard: tf.data.Dataset, size: int) -> tf.data.Dataset:
        if examples is not None:
            return shard.batch(size).prefetch(_PREFETCH_MICRO_BATCHES)
        return shard.unbatch().batch(size)  # (a short batch at a pass's end does not shift the next pass's)
    return {k: micro_batches(_AutoShardDataset(source, layout.shards, k), layout.micro(k)) for k in layout.owned()}


def _examples_below_batch(dataset: tf.data.Dataset) -> tf.data.Dataset | None:
    """The examples the pipeline's last ``batch`` reads, where nothing after it changes them."""
    for node in _chain(dataset):
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
                 strategy: tf.distribute.Strategy | None, first_replica: int):
        self.layout, self.verdict, self.what = layout, verdict, what
        self.shards = [Shard(k, ds) for k, ds in shard_datasets(stream, layout).items()]
        self.strategy, self.first_replica = strategy, first_replica
        local = len(strategy.extended.worker_devices) if strategy is not None and \
            strategy.num_replicas_in_sync > 1 else 1
        self.replicas = Replicas(total=local)
        self.records = 0  # examples this process read of its shards (see share)

    def __iter__(self):
        return self

    def __next__(self):
        parts = [shard.next() for shard in self.shards]
        batch = parts[0] if len(parts) == 1 else tf.nest.map_structure(lambda *xs: tf.concat(xs, 0), *parts)
        self.records += int(tf.nest.flatten(batch)[0].shape[0])
        if self.replicas.total == 1 and (self.strategy is None or self.strategy.num_replicas_in_sync == 1):
            return batch
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: share(batch, self.replicas, context.replica_id_in_sync_group - self.first_replica))

    def share(self) -> str:
        """What this process read, in words (``trainer verify`` reads each worker's share from it)."""
        owned = self.layout.owned()
        return (f"worker {self.layout.index} read {self.records} records of its share of {self.what} "
                f"(shards {owned[0]}-{owned[-1]} of {self.layout.shards})")

    # -- saving and restoring -------------------------------------------------
    def mine(self) -> bytes:
        """This worker's shards' positions and states, for the chief to gather."""
        saves = self.verdict.reason is None
        header = {str(s.index): [s.position.passes, s.position.taken] for s in self.shards}
        return _pack([json.dumps(header).encode(), *(s.state(saves) for s in self.shards)])

    def restore(self, record: dict) -> None:
        """This worker's shards where ``record`` (:func:`unpack`) has them, the shuffles' seed
        generators where this worker's uninterrupted run had them: one draw per pass begun."""
        positions, states = record["positions"], record["states"]
        begun = sum(positions[s.index].passes for s in self.shards)
        generators = seed_generator_states(self.verdict.shuffles, begun) if self.verdict.reason is None else []
        try:
            for shard in self.shards:
                shard.restore(positions[shard.index], states[shard.index])
        except (tf.errors.OpError, ValueError) as exc:
            raise DataError(f"{self.what}: the checkpoint's state of logical shard {shard.index} does not fit "
                            f"this pipeline ({first_line(exc)}); was the dataset changed? Restore the pipeline "
                            "of the run, or start over with --fresh") from exc
        restore_seed_generators(generators)


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


def resume_layout(record: dict, workers: int, index: int, batch: int) -> Layout:
    """The layout a resume with ``workers`` workers reads the checkpoint's shards in."""
    shards = record["shards"]
    if workers > shards or shards % workers:
        works = ", ".join(map(str, divisors(shards)))
        raise ResumeShardError(f"the checkpoint's streamed pipeline is read in {shards} logical shards (fixed when "
                               f"the run started), which {workers} workers cannot share evenly; resume it with "
                               f"{works} workers, or start a new run")
    if record["batch"] != batch:
        raise DataError(f"the checkpoint's streamed pipeline has batches of {record['batch']}, this one of {batch}; "
                        "restore the pipeline of the run, or start over with --fresh")
    return Layout(shards, batch, workers, index)


def _pack(items: list[bytes]) -> bytes:
    return tf.io.serialize_tensor(tf.constant(items, tf.string)).numpy()


def _unpack(blob: bytes) -> list[bytes]:
    return [bytes(item) for item in tf.io.parse_tensor(blob, tf.string).numpy()]


