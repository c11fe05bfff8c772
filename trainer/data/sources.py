"""Training data as a pure function of (seed, epoch, position): what a job's ``build_data`` returns.

Exact resume needs the batches of epoch e from step k on, without decoding the
k batches already trained on. Three ways to say where the data comes from:

* :class:`ArrayData`: examples in arrays (or anything index-addressable: a
  memmap, an h5py dataset, a list). The order of an epoch is a permutation
  drawn from ``(seed, epoch)``; ``augment`` gets an :class:`ExampleRandom`
  keyed by ``(seed, epoch, position)``. Exact by construction.
* :class:`EpochBatches`: your own function ``batches(epoch, start_step, seed)``
  returning the batches of that epoch from that step on (a ``tf.data.Dataset``
  or any iterable). Exact if the function is pure, which is its contract.
* a plain ``tf.data.Dataset`` of batches (:class:`~.streaming.StreamingData`): one
  iterator runs through every epoch and its state (TensorFlow's own iterator
  checkpoint) is saved with every checkpoint, so a resume continues where the
  iterator was, without reading anything twice (a pipeline whose reshuffling
  the checkpoint cannot place is replayed from the run's start instead, which
  is exact but reads everything again). Where the pipeline cannot be
  checkpointed (a Python generator or function), it falls back to skipping, like a
  ``keras.utils.PyDataset``: a resumed epoch skips the batches already done,
  which is exact only if the data yields the same batches each time it is
  iterated; the start-up log says so in one warning naming the reason.

Under a distribution strategy every process prepares only its replicas'
shares of each global batch (sizes as even as possible, computed from the
global batch, so the split never depends on how many batches were skipped);
except a plain ``tf.data.Dataset``: each worker reads only its logical shards of
a pipeline of files (see ``sharded``); one that cannot be split is read whole by
every process, which takes its replicas' shares of each batch (see ``streaming``).
Which of these a job's value is, is decided in ``accepted.py``.
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..errors import DATA_ERROR, TrainerError
from .example_random import ExampleRandom, example_keys

log = logging.getLogger("trainer")

PARALLEL_CALLS = 2
PREFETCH_BATCHES = 2


class DataError(TrainerError, RuntimeError, exit_code=DATA_ERROR):
    """The dataset is missing or damaged; the message names the file and a fix (exit code 4)."""


_IN_STEP = "data check: "  # (begins the message of a check that runs inside the compiled step)


def in_step(message: str) -> str:
    """``message`` for a ``tf.debugging`` assertion on the data inside the compiled step, whose
    failure then ends the run as the :class:`DataError` it stands for (:func:`failed_in_step`)."""
    return _IN_STEP + message


def failed_in_step(exc: tf.errors.InvalidArgumentError) -> DataError | None:
    """The DataError of an :func:`in_step` check that failed in ``exc`` (TensorFlow wraps the
    message: ``assertion failed: [message] [Condition ...]``); None for any other error."""
    text = str(exc.message)
    at = text.find(_IN_STEP)
    return None if at < 0 else DataError(text[at + len(_IN_STEP):].split("]")[0])


@dataclass(frozen=True)
class Replicas:
    """This process feeds replicas ``first .. first + local - 1`` of ``total``."""
    total: int = 1
    first: int = 0
    local: int = 1

    def bounds(self, size, replica):
        """[begin, end) of ``replica``'s share of a batch of ``size`` (ints or int tensors)."""
        base, extra = size // self.total, size % self.total
        begin = replica * base + _minimum(replica, extra)
        return begin, begin + base + _where(replica < extra, 1, 0)

    def local_ids(self) -> range:
        return range(self.first, self.first + self.local)


def _minimum(a, b):
    return min(a, b) if isinstance(b, int) else tf.minimum(a, b)


def _where(cond, a, b):
    return (a if cond else b) if isinstance(cond, (bool, np.bool_)) else tf.where(cond, a, b)


SINGLE = Replicas()


class ArrayData:
    """Examples in arrays: ``x`` (an array, or a dict/tuple of arrays), labels ``y``, optional weights.

    ``prepare(x, y) -> (x, y)`` runs on every batch, training and validation
    (casting, resizing); ``augment(x, y, rand) -> (x, y)`` on training batches
    only, after ``prepare``, with ``rand`` an :class:`ExampleRandom`. Without
    ``y`` both take and return ``x`` alone. Both are traced into the tf.data
    pipeline, so use TensorFlow ops. ``shuffle=False`` keeps the array order
    (validation); ``drop_remainder=True`` drops the last partial batch.
    """

    def __init__(self, x, y=None, sample_weight=None, *, batch_size: int, prepare: Callable | None = None,
                 augment: Callable | None = None, shuffle: bool = True, drop_remainder: bool = False):
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"ArrayData: batch_size must be a positive integer, got {batch_size!r}")
        self.structure = (x,) if y is None else ((x, y) if sample_weight is None else (x, y, sample_weight))
        self.leaves = _leaves(self.structure)
        lengths = {len(leaf) for leaf in self.leaves}
        if len(lengths) != 1:
            raise ValueError(f"ArrayData: x, y and sample_weight have different lengths {sorted(lengths)}")
        self.num_examples = lengths.pop()
        if self.num_examples == 0:
            raise ValueError("ArrayData: no examples")
        self.batch_size = int(batch_size)
        self.prepare, self.augment = prepare, augment
        self.shuffle, self.drop_remainder = shuffle, drop_remainder
        if drop_remainder and self.num_examples < self.batch_size:
            raise ValueError(f"ArrayData: {self.num_examples} examples are fewer than one batch of "
                             f"{self.batch_size} and drop_remainder=True leaves none")
        full, rest = divmod(self.num_examples, self.batch_size)
        self.steps_per_epoch = full if drop_remainder or not rest else full + 1
        self._tables = None

    warning = None  # (a source whose resume may be inexact says so here)

    def __repr__(self) -> str:
        return (f"ArrayData({self.num_examples} examples, batch_size={self.batch_size}, "
                f"{self.steps_per_epoch} steps per epoch)")

    def order(self, seed: int, epoch: int) -> np.ndarray:
        """The example index at each position of ``epoch``."""
        if not self.shuffle:
            return np.arange(self.num_examples)
        return np.random.default_rng([seed, epoch]).permutation(self.num_examples)

    @tf.autograph.experimental.do_not_convert  # (no control flow: spare each start AutoGraph's conversion)
    def _gather(self, index: tf.Tensor):
        return _pack(self.structure, iter([t.gather(index) for t in self._tables]))

    def _apply(self, batch, fn, *extra):
        if fn is None:
            return batch
        if len(batch) == 1:
            return (fn(batch[0], *extra),)
        out = fn(batch[0], batch[1], *extra)
        if not (isinstance(out, (tuple, list)) and len(out) == 2):
            raise ValueError(f"{getattr(fn, '__name__', fn)} must return (x, y), got {type(out).__name__}")
        return tuple(out) + tuple(batch[2:])

    def dataset(self, seed: int, epoch: int, start_step: int, replicas: Replicas = SINGLE,
                training: bool = True) -> tf.data.Dataset:
        """Per-replica batches of ``epoch`` from ``start_step`` on, for this process's replicas."""
        if self._tables is None:  # built once, eagerly: tf.constant copies the arrays
            self._tables = [_Table(leaf) for leaf in self.leaves]
        order = self.order(seed, epoch)
        rows, positions = [], []
        for step in range(start_step, self.steps_per_epoch):
            begin = step * self.batch_size
            size = min(self.batch_size, self.num_examples - begin)
            for replica in replicas.local_ids():
                lo, hi = replicas.bounds(size, replica)
                rows.append(hi - lo)
                positions.append(np.arange(begin + lo, begin + hi))
        flat = np.concatenate(positions) if positions else np.zeros(0, np.int64)
        index = tf.RaggedTensor.from_row_lengths(order[flat].astype(np.int64), np.asarray(rows, np.int64))
        where = tf.RaggedTensor.from_row_lengths(flat.astype(np.int64), np.asarray(rows, np.int64))
        augment = self.augment if training else None

        def make_batch(index, position):
            batch = self._apply(self._gather(index), self.prepare)
            if augment is not None:
                batch = self._apply(batch, augment, ExampleRandom(example_keys(seed, epoch, position)))
            return batch if len(batch) > 1 else batch[0]

        ds = tf.data.Dataset.from_tensor_slices((index, where))
        return _fixed_parallelism(ds.map(make_batch, num_parallel_calls=PARALLEL_CALLS, deterministic=True))

    def validation(self, batch_size: int | None = None) -> ArrayData:
        """The same arrays in order, unaugmented (used when a job gives validation as arrays)."""
        return ArrayData(*self.structure, batch_size=batch_size or self.batch_size, prepare=self.prepare,
                         shuffle=False)


def _leaves(structure) -> list:
    """The arrays of a structure of tuples and dicts (a list is one array of examples, not a structure)."""
    if isinstance(structure, tuple):
        return [leaf for item in structure for leaf in _leaves(item)]
    if isinstance(structure, dict):
        return [leaf for key in sorted(structure) for leaf in _leaves(structure[key])]
    return [structure]


def _pack(structure, values):
    """``structure`` with its leaves replaced, in order, by the next of ``values``."""
    if isinstance(structure, tuple):
        return tuple(_pack(item, values) for item in structure)
    if isinstance(structure, dict):
        return {key: _pack(structure[key], values) for key in sorted(structure)}
    return next(values)


class _Table:
    """One array of examples, gathered by index inside the pipeline: a constant for
    in-memory arrays, a NumPy call for anything else index-addressable."""

    def __init__(self, leaf):
        if isinstance(leaf, np.ndarray) and not isinstance(leaf, np.memmap):
            self.const = tf.constant(leaf)
            self.source = None
        else:
            self.const = None
            self.source = leaf
            first = np.asarray(leaf[0])
            self.dtype, self.shape = tf.as_dtype(first.dtype), first.shape

    def gather(self, index: tf.Tensor) -> tf.Tensor:
        if self.const is not None:
            return tf.gather(self.const, index)
        source = self.source

        def fetch(idx):
            items = [np.asarray(source[int(i)]) for i in idx]
            return np.stack(items) if items else np.zeros((0, *self.shape), self.dtype.as_numpy_dtype)
        out = tf.numpy_function(fetch, [index], self.dtype, stateful=False)
        out.set_shape((None, *self.shape))
        return out


class EpochBatches:
    """Your own batches: ``batches(epoch, start_step, seed)`` returns the (global) batches
    of ``epoch`` from ``start_step`` on, as a ``tf.data.Dataset`` or any iterable of batches.

    Contract: the same arguments give the same batches (derive any randomness from
    them), and skipping to ``start_step`` does not decode the skipped batches.
    """

    def __init__(self, batches: Callable[[int, int, int], Iterable], steps_per_epoch: int,
                 warning: str | None = None):
        if not isinstance(steps_per_epoch, (int, np.integer)) or steps_per_epoch < 1:
            raise ValueError(f"EpochBatches: steps_per_epoch must be a positive integer, got {steps_per_epoch!r}")
        self.batches = batches
        self.steps_per_epoch = int(steps_per_epoch)
        self.warning = warning

    def __repr__(self) -> str:
        return f"EpochBatches({self.steps_per_epoch} steps per epoch)"

    def dataset(self, seed: int, epoch: int, start_step: int, replicas: Replicas = SINGLE,
                training: bool = True) -> tf.data.Dataset:
        ds = _as_dataset(self.batches(epoch, start_step, seed))
        return split_for_replicas(ds, replicas)


def _as_dataset(batches) -> tf.data.Dataset:
    if isinstance(batches, tf.data.Dataset):
        return batches
    iterator = iter(batches)
    try:
        first = next(iterator)
    except StopIteration:
        return tf.data.Dataset.from_tensors(0).take(0)
    first = tf.nest.map_structure(np.asarray, tuple(first) if isinstance(first, list) else first)
    spec = tf.nest.map_structure(lambda a: tf.TensorSpec((None, *a.shape[1:]), tf.as_dtype(a.dtype)), first)

    def generate():
        yield first
        yield from iterator
    return tf.data.Dataset.from_generator(generate, output_signature=spec)


def share(batch, replicas: Replicas, replica: int):
    """``replica``'s share of a global ``batch`` (a structure of tensors), as ``bounds`` says."""
    size = tf.shape(tf.nest.flatten(batch)[0])[0]
    lo, hi = replicas.bounds(size, replica)
    return tf.nest.map_structure(lambda t: t[lo:hi], batch)


def split_for_replicas(ds: tf.data.Dataset, replicas: Replicas) -> tf.data.Dataset:
    if replicas.total == 1:
        return ds

    def parts(*batch):
        batch = batch[0] if len(batch) == 1 else batch
        pieces = [tf.data.Dataset.from_tensors(share(batch, replicas, r)) for r in replicas.local_ids()]
        return functools.reduce(lambda a, b: a.concatenate(b), pieces)
    return ds.flat_map(parts)


def _fixed_parallelism(ds: tf.data.Dataset) -> tf.data.Dataset:
    """Prefetch two batches, with tf.data's autotuning off. With it on, destroying an
    iterator at the end of an epoch waits for the autotuner's thread, which stalled
    training by 2-8 s at about every other epoch end on a 2-core machine (measured);
    the fixed settings train as fast."""
    options = tf.data.Options()
    options.autotune.enabled = False
    return ds.prefetch(PREFETCH_BATCHES).with_options(options)
