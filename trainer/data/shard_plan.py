"""The plan of a sharded read: whether a streamed pipeline can be read in logical shards of its
files, how many (``--data-shards``), which a worker owns, and the counts a checkpoint allows.
Decided from the pipeline's chain of datasets and the worker count, before anything is read
(``sharded`` reads by this plan)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import tensorflow as tf

from ..errors import BAD_INPUT, CHECKPOINT_ERROR, TrainerError
from .pipeline_graph import Verdict
from .sources import Replicas

MAX_DEFAULT_SHARDS = 64  # --data-shards' default: the files, at most this many
UNKNOWN_LENGTH = ("its length is unknown until its first pass ends, and every worker must end an epoch at the same "
                  "step; give it with dataset.apply(tf.data.experimental.assert_cardinality(N))")

_READERS = ("TFRecordDatasetV2", "TextLineDatasetV2", "FixedLengthRecordDatasetV2", "_TFRecordDataset",
            "_TextLineDataset", "_FixedLengthRecordDataset")
_FILE_FANOUTS = ("_InterleaveDataset", "_ParallelInterleaveDataset", "_FlatMapDataset")
_BATCHES = ("_BatchDataset", "_ParallelBatchDataset", "_PaddedBatchDataset")


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
        """Whether a run that starts now reads a pipeline over files in logical shards."""
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


def worker_counts(shards: int) -> str:
    """The worker counts that can share ``shards`` logical shards, in words: "1, 2, 3 or 6"."""
    counts = [str(d) for d in range(1, shards + 1) if shards % d == 0]
    return " or ".join([", ".join(counts[:-1]), counts[-1]]) if len(counts) > 1 else counts[0]


@dataclass(frozen=True)
class Split:
    """What a pipeline offers for sharding: its global batch size and number of files, or why it cannot be split."""
    batch: int | None = None
    files: int | None = None
    reason: str | None = None


def inspect(dataset: tf.data.Dataset, verdict: Verdict, per_pipeline: bool = False,
            known_length: bool = False) -> Split:
    """Whether ``dataset`` can be read in logical shards of files, from its chain of datasets
    (``per_pipeline``: the job's function shards it itself, files or not; ``known_length``: the
    epoch's length was learned, where TensorFlow does not know it)."""
    if verdict.replay:
        return Split(reason=f"its reshuffling cannot be restored shard by shard ({verdict.reason})")
    batch, files = batch_size_of(dataset), _file_count(dataset)
    if batch is None:
        return Split(reason="it has no batch() with a fixed batch size to split among the shards")
    if files is None and not per_pipeline:
        return Split(reason="it does not start from a list of files (from_tensor_slices(files) or "
                            "list_files, then interleave or a reader such as TFRecordDataset)")
    if not known_length and int(dataset.cardinality()) < 1:
        return Split(batch=batch, files=files, reason=UNKNOWN_LENGTH)  # (it can be split once the length is known)
    return Split(batch=batch, files=files)


def chain(dataset: tf.data.Dataset):
    """The pipeline's datasets, outermost first, along their first inputs."""
    while dataset is not None:
        yield dataset
        inputs = dataset._inputs()
        dataset = inputs[0] if inputs else None


def batch_size_of(dataset) -> int | None:
    for node in chain(dataset):
        if type(node).__name__ in _BATCHES:
            size = tf.get_static_value(node._batch_size)
            return int(size) if size is not None and size > 0 else None
    return None


def _file_count(dataset) -> int | None:
    for node in chain(dataset):
        name = type(node).__name__
        if name in _READERS or name in _FILE_FANOUTS:
            files = node._inputs()[0] if node._inputs() else None
            count = int(files.cardinality()) if files is not None else -1
            spec = files.element_spec if files is not None else None
            is_names = isinstance(spec, tf.TensorSpec) and spec.dtype == tf.string and spec.shape.rank == 0
            return count if is_names and count > 0 else None
    return None


def choose_count(requested: int | None, split: Split, workers: int, per_pipeline: bool = False) -> int:
    """The logical shards of a new run: ``requested`` (--data-shards), else the files, at most
    MAX_DEFAULT_SHARDS, rounded down to a multiple of the worker count (0: none fits). A job's
    per-input-pipeline function batches ``get_per_replica_batch_size``, so there they divide the batch."""
    most = min(split.files or split.batch, split.batch)
    if requested is not None:
        if requested > most:
            limit = "files" if (split.files or split.batch) <= split.batch else "examples in a batch"
            raise ShardCountError(f"--data-shards {requested}: the pipeline has only {most} {limit} to split; "
                                  f"use at most {most}")
        if requested % workers:
            raise ShardCountError(f"--data-shards {requested} cannot be split evenly among {workers} workers; "
                                  f"with {requested} logical shards the job can run on {worker_counts(requested)} "
                                  "workers")
        if per_pipeline and split.batch % requested:
            raise ShardCountError(f"--data-shards {requested} does not divide the global batch of {split.batch}, "
                                  "which the job's input-pipeline function splits with get_per_replica_batch_size")
        return requested
    fits = [n for n in range(min(most, MAX_DEFAULT_SHARDS), 0, -1)
            if n % workers == 0 and not (per_pipeline and split.batch % n)]
    return fits[0] if fits else 0


def resume_layout(record: dict, workers: int, index: int) -> Layout:
    """The layout a resume with ``workers`` workers reads the checkpoint's shards in."""
    shards = record["shards"]
    if workers > shards or shards % workers:
        raise ResumeShardError(f"the checkpoint's streamed pipeline is read in {shards} logical shards (fixed when "
                               f"the run started), which {workers} workers cannot share evenly; resume it with "
                               f"{worker_counts(shards)} workers, or start a new run")
    return Layout(shards, record["batch"], workers, index)
