"""A plain ``tf.data.Dataset`` of batches, resumed from TensorFlow's own checkpoint of its
iterator rather than by reading again what was already trained on."""
from __future__ import annotations

import logging

import tensorflow as tf

from . import sharded
from .pipeline_graph import Verdict, checkpointable, first_line, restore_seed_generators, seed_generator_states
from .shard_plan import Workers
from .sources import SINGLE, DataError, Replicas, share, split_for_replicas

log = logging.getLogger("trainer")


class StreamingData:
    """A plain ``tf.data.Dataset`` of batches (files, interleave, shuffle buffer, map, batch),
    resumed from its iterator's saved state instead of by skipping.

    ``fit`` iterates such a dataset once per epoch, and a reshuffling ``shuffle``
    draws epoch e's order from how often the dataset was iterated in this
    process, which a resumed process cannot repeat. So one iterator over
    ``dataset.repeat()`` (the same sequence of iterations) runs through every
    epoch, and at every save its state, serialized by TensorFlow's own
    iterator checkpointing, goes into the checkpoint's ``data`` group:
    position, shuffle buffer and seed state, committed with the weights.
    Symbolic checkpointing (positions rather than buffers) is switched on
    where the pipeline allows it. Under a strategy with several replicas, in one
    process or several, the iterator still reads the global batches and each
    replica is fed its share of each (:class:`_Shares`): every worker's
    iterator is in the state one process's would be (as every worker reads the
    same batches: the pipeline is built from the run's seed in each), so the
    checkpoint holds it once, a restore gives it to every worker, and a run
    resumed with another number of workers or replicas goes on at the same
    place in the same order. A restore also puts the seed generators of
    the pipeline's reshuffling shuffles where the uninterrupted run had them,
    which the saved state may not say (see ``pipeline_graph``). A pipeline
    whose reshuffling cannot be placed so (``pipeline_graph.RESHUFFLES``) is
    replayed from the run's start instead, skipping every batch done. Where
    the state cannot be saved at all, the source falls back to skipping within
    the epoch (``dataset``). ``warning`` names the reason either way. Data of
    unknown length (``cardinality()`` -2, as a TFRecord pipeline's) has
    ``steps_per_epoch`` None until its first pass ends, where the first epoch
    ends, as in ``fit`` (``learn_length``; see ``_passes``).
    """

    def __init__(self, dataset: tf.data.Dataset, what: str, per_pipeline=None):
        self.source, self.what = dataset, what
        self.steps_per_epoch = epoch_length(dataset, what)  # None: learned when the first pass ends
        self.unknown_length = self.steps_per_epoch is None
        self.stream, self.verdict = checkpointable(dataset)
        self.state: tf.Variable | None = None  # the checkpointed iterator state (see bind)
        self._iterator = None  # the run's one iterator of global batches
        self._feed = None  # what the loop reads: the iterator, or the replicas' shares of its batches
        self._strategy = None
        self._workers = Workers()
        self.per_pipeline = per_pipeline  # the job's function of an InputContext that made ``dataset``
        self._reader: sharded.ShardedReader | None = None  # this worker's logical shards (sharded reading)
        self._first_pass = False  # the run's iterator reads the first pass alone (unknown length)

    def __repr__(self) -> str:
        return f"StreamingData({self.steps_per_epoch or 'unknown'} steps per epoch)"

    def learn_length(self, steps: int) -> None:
        """The epoch's length, once the first pass of data of unknown length has ended (or as the
        checkpoint's state kept it): every later epoch has as many steps."""
        self.steps_per_epoch = steps

    @property
    def reason(self) -> str | None:
        return self.verdict.reason

    @property
    def resumes_iterator(self) -> bool:
        """Whether the loop reads through this source's one iterator (restored or replayed), or
        through its logical shards (which skip within a shard where the state cannot be saved)."""
        return self.reason is None or self.verdict.replay or self._workers.shards_new_runs()

    @property
    def warning(self) -> str | None:
        if self.reason is None:
            return None
        if self.verdict.replay:
            return (f"{self.what} is a tf.data.Dataset whose iterator cannot be checkpointed exactly ({self.reason}): "
                    "a resume replays the run's batches from its first step, which is exact but reads again "
                    "every batch trained on so far; use trainer.ArrayData or trainer.EpochBatches to resume "
                    "without reading them again")
        return (f"{self.what} is a tf.data.Dataset whose iterator cannot be checkpointed ({self.reason}): a "
                "resumed epoch skips the batches already trained on, in a new iteration of the dataset, which "
                "is exact only if it yields the same batches every time (no reshuffling, no unseeded random "
                "ops); use trainer.ArrayData or trainer.EpochBatches for exact resume")

    def bind(self, strategy: tf.distribute.Strategy, workers: Workers = Workers()) -> dict:
        """The checkpoint group for the iterator state (in every checkpoint of the run, empty when
        skipping), for a run under ``strategy`` on ``workers``."""
        self._strategy, self._workers = strategy, workers
        self.state = tf.Variable("", dtype=tf.string, trainable=False)
        return {"iterator": self.state}

    @property
    def reader(self) -> sharded.ShardedReader | None:
        """This worker's logical shards, once opened (None while reading the global stream)."""
        return self._reader

    @property
    def restores_shards(self) -> bool:
        """Whether the restored checkpoint has this pipeline in logical shards (see ``sharded``)."""
        return self.state is not None and sharded.is_sharded(self.state.numpy())

    @property
    def collective_capture(self) -> bool:
        """Whether every worker takes part in a save's capture (each has its own shards' states)."""
        return self._reader is not None and self._workers.count > 1

    def capture(self, writes: bool = True) -> None:
        """At a save boundary: the iterator's state into ``state`` (the checkpoint's snapshot
        copies it); emptied where it cannot be saved, so that a state restored from an older
        checkpoint is never carried, stale, into this run's checkpoints. Sharded, every worker
        hands its shards' states to the chief (``writes``), which keeps them all."""
        if self._reader is not None:
            everyone = self._workers.gather(self._reader.mine())
            if writes:
                self.state.assign(sharded.combine(everyone, self._reader.layout))
        elif self.reason is not None:
            self.state.assign("")
        elif self._iterator is not None:
            self.state.assign(tf.io.serialize_tensor(self._iterator._serialize_to_tensors()[_STATE]))

    def iterator(self, epoch: int, start_step: int):
        """The one iterator of the run, opened at the first epoch it trains (restored if saved);
        with several replicas, the feed of their shares of its batches; with logical shards, this
        worker's reader (see ``sharded``). Data of unknown length: see ``_passes``."""
        if self._first_pass and epoch > 0 and not self._in_shards(epoch, start_step):
            self._use(iter(self.stream.repeat()), epoch)  # (this process read the first pass: its shuffles drew)
        elif self._feed is None and not self._in_shards(epoch, start_step):
            opener = self._replayed if self.verdict.replay else self._open
            self._use(opener(epoch, start_step), epoch)
        return self._feed

    def _in_shards(self, epoch: int, start_step: int) -> bool:
        """Whether the feed is now this worker's logical shards (see ``sharded.open_reader``): opened
        where a run begins, or, for data of unknown length, read whole in the first epoch, where
        the second begins (its length learned: every worker ends each epoch at the same step)."""
        if self._reader is None:
            begins = (epoch, start_step) == (0, 0) or (self.unknown_length and (epoch, start_step) == (1, 0))
            self._reader = sharded.open_reader(self.stream, self.verdict, self.what, self._workers, self._strategy,
                                               self.state.numpy(), begins, self.steps_per_epoch is not None,
                                               (epoch, start_step), self.per_pipeline)
            self._feed = self._reader or self._feed
        return self._reader is not None

    def log_share(self) -> None:
        """At the end of this process's training: the records it read of its logical shards."""
        if self._reader is not None:
            log.info("%s", self._reader.share())

    def _use(self, iterator, epoch: int) -> None:
        self._iterator, self._first_pass = iterator, self.unknown_length and epoch == 0
        several = self._strategy is not None and self._strategy.num_replicas_in_sync > 1
        self._feed = _Shares(self._iterator, self._strategy) if several else self._iterator

    def _replayed(self, epoch: int, start_step: int):
        """The run's one iterator from its start, past the batches already trained on: a new
        process draws the same sequence of shuffle seeds as the uninterrupted one did."""
        done = epoch * self.steps_per_epoch + start_step if epoch else start_step
        if done:
            log.info("replaying %d batches of %s from the run's start to resume epoch %d step %d",
                     done, self.what, epoch + 1, start_step)
        return iter(self._passes(epoch).skip(done))

    def _open(self, epoch: int, start_step: int):
        saved = self.state.numpy()
        if saved and self.unknown_length and (epoch, start_step) == (1, 0):  # the first pass's, ended
            restore_seed_generators(seed_generator_states(self.verdict.shuffles, 1))
            log.info("restored the iterator of %s at epoch 2 step 0, after its first pass (nothing skipped)",
                     self.what)
            return iter(self.stream.repeat())
        if saved:
            return self._restored(saved, epoch, start_step)
        fresh = iter(self._passes(epoch))
        if (epoch, start_step) == (0, 0):
            return self._checked(fresh)
        log.warning("the checkpoint holds no iterator state of %s (written while it could not be saved); "
                    "skipping %d batches of a new iteration for epoch %d, exact only if the dataset yields "
                    "the same batches every time", self.what, start_step, epoch + 1)
        for _ in range(start_step):  # (read from the iterator a later resume restores the state of)
            next(fresh)
        return fresh

    def _restored(self, saved: bytes, epoch: int, start_step: int):
        """The saved iterator, its shuffles' seed generators where the uninterrupted run had them
        (see ``pipeline_graph``): at the pass the iterator is in, the last one begun."""
        steps = self.steps_per_epoch
        passes = -(-(epoch * steps + start_step) // steps) if steps else 1  # (unknown: in the first)
        generators = seed_generator_states(self.verdict.shuffles, passes)
        iterator = iter(self._passes(epoch))
        try:
            iterator._restore_from_tensors({_STATE: tf.io.parse_tensor(saved, tf.variant)})
        except (tf.errors.OpError, ValueError) as exc:
            raise DataError(f"{self.what}: the checkpoint's iterator state does not fit this pipeline "
                            f"({first_line(exc)}); was the dataset changed? Restore the pipeline of "
                            "the run, or start over with --fresh") from exc
        restore_seed_generators(generators)
        log.info("restored the iterator of %s at epoch %d step %d (nothing skipped)", self.what, epoch + 1, start_step)
        return iterator

    def _passes(self, epoch: int) -> tf.data.Dataset:
        """What the run's iterator reads from ``epoch`` on: every pass (``repeat``), except in the
        first epoch of data of unknown length, where it reads the first pass alone, so that the
        loop finds the epoch's end where the iterator ends. The epoch after opens the iterator
        over every pass, whose shuffles draw the next seeds, as fit's next iteration would. A
        state saved in the first epoch is the first pass's; one saved at the second epoch's start
        too (the repeated iterator opens with that epoch's first step), with nothing left to
        restore: ``_open`` places the seed generators after one pass and opens the repeated one."""
        return self.stream if self.unknown_length and epoch == 0 else self.stream.repeat()

    def _checked(self, iterator):
        """``iterator``, after making sure its state can be saved (an op without support for
        symbolic checkpointing refuses only here); if not, the run goes on unsaved, with the warning."""
        try:
            iterator._serialize_to_tensors()
        except tf.errors.OpError as exc:
            self.verdict = Verdict(first_line(exc))
            log.warning("%s", self.warning)
        return iterator

    def dataset(self, seed: int, epoch: int, start_step: int, replicas: Replicas = SINGLE,
                training: bool = True) -> tf.data.Dataset:
        """Batches from ``start_step`` on, skipping: validation, and training where the state cannot be saved."""
        if start_step:
            log.info("skipping %d batches of %s to resume epoch %d", start_step, self.what, epoch + 1)
        return split_for_replicas(self.source.skip(start_step), replicas)


_STATE = "_STATE"  # the key of a tf.data iterator's serialized state


def epoch_length(dataset: tf.data.Dataset, what: str) -> int | None:
    """The dataset's batches per pass, or None where TensorFlow cannot tell (a TFRecord pipeline,
    a filter): the first epoch then ends where the data ends, as in ``model.fit``."""
    steps = int(dataset.cardinality())
    if steps == tf.data.INFINITE_CARDINALITY:
        raise ValueError(f"{what} is an infinite tf.data.Dataset (a repeat() without a count): model.fit needs "
                         "steps_per_epoch for it, and here an epoch is one pass over the data; drop the repeat() "
                         "(the trainer iterates the dataset once per epoch)")
    if steps == 0:
        raise ValueError(f"{what} is a tf.data.Dataset without a batch")
    return None if steps == tf.data.UNKNOWN_CARDINALITY else steps


class _Shares:
    """Global batches from one iterator, each replica fed its share (the split of
    ``split_for_replicas``): read by the loop's compiled step like a distributed iterator,
    while the iterator underneath stays one that TensorFlow can checkpoint, in the same
    state on every worker. (tf.distribute's own iterators cannot be checkpointed.)"""

    def __init__(self, iterator, strategy: tf.distribute.Strategy):
        self.iterator, self.strategy = iterator, strategy
        self.replicas = Replicas(total=strategy.num_replicas_in_sync)

    def __iter__(self):
        return self

    def __next__(self):
        return self.place(next(self.iterator))

    def get_next_as_optional(self):
        """The next global batch, empty at the data's end (where the loop looks for it)."""
        return self.iterator.get_next_as_optional()

    def place(self, batch):
        """Each replica's share of a global ``batch``."""
        return self.strategy.experimental_distribute_values_from_function(
            lambda context: share(batch, self.replicas, context.replica_id_in_sync_group))
