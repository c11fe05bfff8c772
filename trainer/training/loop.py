"""The training loop: epochs of ``model.train_step`` under any ``tf.distribute`` strategy.

Why not ``model.fit``: Keras 3's fit fails under MultiWorkerMirroredStrategy
("unsupported type PerReplica", keras-team/keras#20585), and a resumed epoch
needs the position, not just the epoch. This loop calls the model's own
``train_step``/``test_step`` (so compile settings, custom steps and metrics
work) through ``strategy.run`` inside a ``tf.function``, like Keras's
``make_train_function``: ``steps_per_execution`` steps per call (see
``trainer.training.execution``), and drives the user's Keras callbacks at the usual
hooks, once per execution as ``fit`` does. It reads nothing back from a step unless
someone asks (the progress bar's redraws, batch callbacks), so steps queue
up as in ``fit``.

At execution boundaries (every step when ``steps_per_execution`` is 1) it
acts on what the processes agreed (see ``trainer.cluster.distribute``; one process
decides alone at every boundary, several agree in each execution that passes
a multiple of 8 global steps): a stop signal (save and raise :class:`Interrupted`),
a time-based save, a live learning-rate change, a preemption notice (a save now,
or a stop before its deadline: see ``trainer.training.deadline``). Saves due by
step count and epoch-end saves need no agreement: every process reaches them at
the same step.

Data of unknown length (a ``tf.data`` pipeline whose ``cardinality()`` is -2)
trains as ``fit`` trains it: in its first epoch each execution looks for the
data's end before each step (an empty optional), the epoch ends there, and its
steps are every later epoch's (``_learn_length``).

One class, a little over the usual module size, on purpose: its phases (epoch,
execution, boundary, epoch end, evaluation) share the compiled step functions
and the position, which split modules would have to pass back and forth.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ..cluster.distribute import Agreement, Decisions
from ..data.sources import SINGLE, DataError, Replicas, failed_in_step
from ..steering.requests import LrRequests
from ..steering.signals import StopRequest
from . import execution
from .callback_state import CallbackStates
from .deadline import Deadlines
from .history import HistoryWriter
from .history_format import fractional_epoch
from .lr_change import Steering
from .progress import Progress
from .saver import Saver
from .state import TrainerState
from .writers import Writers

log = logging.getLogger("trainer")


class Interrupted(Exception):
    def __init__(self, signum: int, checkpoint: int, sources: tuple = ()):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint
        self.sources = sources  # the preemption notices behind the stop, as the workers agreed


@dataclass(kw_only=True)
class Loop:
    """Built by keyword (``train`` and the benchmarks alike); what a run without workers,
    steering or callbacks does not need has a default."""
    model: keras.Model
    train: object                  # a trainer.data source
    epochs: int
    state: TrainerState
    saver: Saver
    progress: Progress
    strategy: tf.distribute.Strategy | None = None  # default: the model's
    replicas: Replicas = SINGLE
    validation: object | None = None
    seed: int = 0
    stop: StopRequest = field(default_factory=lambda: StopRequest(signals=()))
    agreement: Agreement = field(default_factory=Agreement)
    steering: Steering | None = None  # live learning-rate changes
    requests: LrRequests | None = None  # the chief's view of the run dir's LR requests
    history: HistoryWriter | None = None  # the chief writes history.json/png
    callbacks: keras.callbacks.CallbackList | None = None
    callback_states: CallbackStates | None = None  # what the callbacks resume with (with ``callbacks``)
    validation_freq: int | tuple = 1  # as model.fit's: every N epochs, or the listed (1-based) epochs
    max_steps: int | None = None   # end once this global step is done (``--max-steps``)
    deadlines: Deadlines | None = None  # preemption notices (default: signals stop at once)
    writers: Writers | None = None      # flushed after a notice's save, which counts once committed

    def __post_init__(self):
        self.strategy = self.strategy or self.model.distribute_strategy
        self.steps_per_execution = self.model.steps_per_execution  # (checked when the job was loaded)
        self._train_fn, self._train_agreeing_fn = self._with_agreement(self._execution_function(self.model.train_step))
        self._train_to_end_fns = None  # (made for data of unknown length, in its first epoch)
        self._test_fn = self._test_to_end_fn = None
        self._counts: dict[int, tf.Tensor] = {}
        self._batch_hooks = bool(self.callbacks and self.callbacks.callbacks)
        self.deadlines = self.deadlines or Deadlines(self.stop)
        self._turn_began: float | None = None  # when the last epoch's end began

    # -- tf.functions -----------------------------------------------------
    def _with_agreement(self, execute):
        """An execution, and (several workers) one that also sums the agreement vector (its last
        argument)."""
        strategy, agreement = self.strategy, self.agreement
        if not agreement.fused:
            return _data_checked(execute), None

        @tf.function(reduce_retracing=True, autograph=False)  # (no control flow of its own)
        def agreeing(*args):
            *inputs, flags = args
            return execute(*inputs), agreement.reduce_in_step(strategy, flags)
        return _data_checked(execute), _data_checked(agreeing)

    def _one_step(self, step_fn):
        strategy, model = self.strategy, self.model

        def one_step(data):
            return _first_local(strategy, strategy.run(step_fn, args=(data,)))
        if not model.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
        return one_step

    def _execution_function(self, step_fn):
        """``count`` steps of ``step_fn`` in one call (a tensor, so a shorter execution does not
        retrace); the last step's logs. With one step per execution the graph has no loop, and
        AutoGraph, which only the loop needs, is spared (``one_step`` converts the model's code)."""
        one_step, single = self._one_step(step_fn), self.steps_per_execution == 1

        @tf.function(reduce_retracing=True, autograph=not single)
        def execute(iterator, count):
            logs = one_step(next(iterator))
            if not single:
                for _ in tf.range(count - 1):
                    logs = one_step(next(iterator))
            return logs
        return execute

    def _to_end_function(self, step_fn):
        """For data of unknown length: one step of ``step_fn`` on ``batch`` (the feed's next batch,
        as an optional holding one); its logs. An execution of such data calls it once per step,
        looking for the data's end between them (``_steps_to_end``): one call looping over
        optionals, as ``fit``'s does, would put the step's collectives under a ``tf.cond`` in a
        ``tf.while_loop``, which MultiWorkerMirroredStrategy refuses."""
        one_step = self._one_step(step_fn)

        @tf.function(reduce_retracing=True)
        def execute(feed, batch):
            place = getattr(feed, "place", _as_is)  # (a feed of replicas' shares places each batch)
            return one_step(place(batch.get_value()))
        return execute

    def _iterator(self, source, epoch: int, start_step: int, training: bool):
        if training and getattr(source, "resumes_iterator", False):
            return source.iterator(epoch, start_step)  # one iterator through every epoch, saved with the run
        def dataset_fn(context):
            return source.dataset(self.seed, epoch, start_step, self.replicas, training=training)
        return iter(self.strategy.distribute_datasets_from_function(dataset_fn))

    # -- the loop ----------------------------------------------------------
    def run(self) -> dict:
        """Train until ``epochs``; returns the last epoch's logs. Raises Interrupted on a stop."""
        cbs = self.callbacks
        if cbs:
            self.callback_states.train_begin(cbs, mid_epoch=self.state.step_in_epoch > 0)
        logs: dict = {}
        self.model.stop_training = False
        while not self._done():
            logs = self._epoch()
        if cbs:
            cbs.on_train_end(logs)
        return logs

    def _epoch(self) -> dict:
        state, model, cbs = self.state, self.model, self.callbacks
        epoch, start = state.epoch, state.step_in_epoch
        steps = self.train.steps_per_epoch  # None: data of unknown length, in its first epoch
        if start == 0:
            model.reset_metrics()  # mid-epoch, the restored running totals continue
            self._apply_scheduled(epoch)
        self.saver.restart_clock()
        if cbs:
            cbs.on_epoch_begin(epoch)
        self.progress.epoch_begin(epoch)
        # (a stop after an epoch's last step resumes with no step left: straight to the epoch's end)
        iterator = self._iterator(self.train, epoch, start, training=True) if _before_end(start, steps) else None
        if self._turn_began is not None:  # (from the last epoch's end to this epoch's first step)
            self.deadlines.measure_epoch_turn(time.monotonic() - self._turn_began)
            self._turn_began = None
        logs = None  # the last execution's logs, as train_step returned them
        n = self.steps_per_execution
        while _before_end(state.step_in_epoch, steps):
            count = execution.length(state.step_in_epoch, steps, n)
            if self.max_steps is not None:  # (--max-steps ends the run inside an execution)
                count = min(count, self.max_steps - state.global_step)
            first = _next_if_any(iterator) if steps is None else None
            if steps is None and first is None:  # the data ended with the last execution
                steps = self._learn_length()
                break
            begin, end = execution.batch_numbers(state.step_in_epoch, n)
            if self._batch_hooks:
                cbs.on_train_batch_begin(begin)
            started = time.monotonic()
            logs, decided, done = self._execute(iterator, count, steps, first)
            if done < count:  # (an execution ends early only where the data ends)
                steps, count = self._learn_length(), done
            self.deadlines.measure_execution(time.monotonic() - started, count)
            if self._batch_hooks:
                cbs.on_train_batch_end(end, logs)
            self.progress.step(logs, count)
            self._boundary(decided, steps, count, logs)
            if model.stop_training or self._at_step_limit():
                break
        if state.step_in_epoch == steps and not model.stop_training:
            self._fits_call_at_the_end(epoch)
        if self._at_step_limit() and _before_end(state.step_in_epoch, steps) and not model.stop_training:
            self.saver.save("step limit")  # mid-epoch: the run ends here, the epoch stays open
            return {}
        return self._end_epoch(epoch, logs)

    def _at_step_limit(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    def _execute(self, iterator, count: int, steps: int | None, first=None):
        """One execution of ``count`` steps (fewer if the data ends in it: data of unknown length,
        whose next batch ``first`` is); (its logs, what every process does at the boundary after
        it, the steps done)."""
        state, agreement = self.state, self.agreement
        # (data of unknown length: the first step on ``first``, and the others one call each)
        inputs = (iterator, self._count(count)) if first is None else (iterator, first)
        plain, agreeing_fn = (self._train_fn, self._train_agreeing_fn) if first is None else self._train_to_end()
        agreeing = agreement.fused and execution.crossed(state.global_step, state.global_step + count,
                                                         agreement.every)
        if agreeing:  # (decided before the execution: a stop must leave room for it and the next agreement)
            local = self._local(count + agreement.every + self.steps_per_execution - 1, steps)
            logs, agreed = agreeing_fn(*inputs, agreement.local_flags(local))
        else:
            logs = plain(*inputs)
        done = count
        if first is not None:
            logs, done = _steps_to_end(plain, iterator, count - 1, logs)
        state.step_in_epoch += done
        state.global_step += done
        if agreeing:
            decided = agreement.decide(local, agreed)
            self.deadlines.measure_save(decided.save_seconds)
            return logs, decided, done
        # one process decides alone at every boundary; several decide nothing between agreements
        return logs, Decisions() if agreement.fused else self._local(self.steps_per_execution, steps), done

    def _train_to_end(self):
        if self._train_to_end_fns is None:
            self._train_to_end_fns = self._with_agreement(self._to_end_function(self.model.train_step))
        return self._train_to_end_fns

    def _fits_call_at_the_end(self, epoch: int) -> None:
        """The call ``fit`` makes, with one step per execution, at the end of every epoch of data of
        unknown length: one more execution, on no batch, which fails at its ``next()`` (``fit``
        stops the epoch there) but not before the step's updates that need no batch have run:
        the optimizer's ``iterations`` and the dropout seeds advance once more, and with them
        the weights of every later step (an Adam bias correction). Made on an empty iterator
        of the data, in every process at the same place (after the epoch's last step, before its
        end), as ``fit`` makes it; with several replicas, whose updates could leave a
        collective half-launched, it is not made."""
        if not (getattr(self.train, "unknown_length", False) and self.steps_per_execution == 1
                and self.strategy.num_replicas_in_sync == 1):
            return
        def no_batches(context):
            return self.train.dataset(self.seed, epoch, 0, self.replicas).take(0)
        with contextlib.suppress(tf.errors.OutOfRangeError):  # (it always fails: there is no batch)
            self._train_fn(iter(self.strategy.distribute_datasets_from_function(no_batches)), self._count(1))

    def _learn_length(self) -> int:
        """The first pass of data of unknown length has ended: its steps are every epoch's, kept in
        the checkpoint's state (a resumed run reads them there) and shown from now on."""
        steps = self.state.step_in_epoch
        if not steps:
            raise DataError("the training data (a tf.data.Dataset of unknown length) yielded no batch")
        self.train.learn_length(steps)
        self.state.steps_per_epoch = self.progress.steps_per_epoch = steps
        if self.steering is not None:
            self.steering.steps = steps
        log.info("the training data ended after %d steps: every epoch has as many", steps)
        return steps

    def _count(self, count: int) -> tf.Tensor:
        """``count`` as a tensor, made once (a Python int would retrace the function per value)."""
        if count not in self._counts:
            self._counts[count] = tf.constant(count, tf.int32)
        return self._counts[count]

    def _local(self, steps_ahead: int, steps: int | None) -> Decisions:
        """What this process would decide alone at this boundary, were the next decision
        ``steps_ahead`` steps away."""
        req = self.requests.immediate() if self.requests else None
        state = self.state
        # (at or before an epoch's end; in a first epoch of unknown length, only where it ends)
        turn = state.step_in_epoch == 0 or not _before_end(state.step_in_epoch + steps_ahead, steps)
        extra = self.deadlines.epoch_turn(self._validation_steps()) if turn else 0.0
        notices = self.deadlines.local({"position": fractional_epoch(state.epoch, state.step_in_epoch, steps),
                                        "global_step": state.global_step}, steps_ahead, extra)
        return Decisions(stop=notices.stop, save=self.saver.time_due(), lr=req.value if req else None,
                         requests=[req] if req else [], notice_save=notices.save, sources=notices.sources,
                         save_seconds=self.deadlines.save_seconds)

    def _validation_steps(self) -> int:
        """The validation's steps, where known (for a deadline's estimate of an epoch's turn)."""
        return (self.validation.steps_per_epoch or 0) if self.validation is not None else 0

    def _boundary(self, decided: Decisions, steps: int | None, count: int, logs) -> None:
        state = self.state
        if decided.lr is not None:
            self.steering.apply(decided.lr, decided.requests, self.requests, "live")
        if decided.stop:
            # the resumed run starts at this epoch's end, without a step (unknown length: it may)
            if steps is None or state.step_in_epoch == steps:
                state.last_step_logs = _pythonify(logs)
            self._record_notices()
            number = self.saver.save("notice" if decided.sources else "signal")
            raise Interrupted(decided.stop, number, decided.sources)
        if decided.notice_save:
            self._notice_save()
        elif (self.saver.steps_due(count) or decided.save) and _before_end(state.step_in_epoch, steps):
            self.saver.save("periodic")

    def _notice_save(self) -> None:
        """A checkpoint committed at once on a notice, as insurance; its time is what a later stop
        must leave room for (the upload included, for a remote run dir)."""
        started = time.monotonic()
        new = self.deadlines.record(self.state.history)
        self.saver.save("notice")
        self._committed(started)
        if new and self.history is not None:  # (after the timing: history.png takes a while to draw)
            self.history.submit_history(self.state.history)

    def _committed(self, started: float) -> None:
        """Wait until the save begun at ``started`` is committed; its time is a save's."""
        if self.writers is not None:
            self.writers.commit()
        self.deadlines.measure_save(time.monotonic() - started)

    def _record_notices(self) -> None:
        """At a stop: the notices' records, complete, into the history, before the save that holds them."""
        changed = self.deadlines.stopping(self.state.global_step, self.saver.store.last_number + 1)
        if (self.deadlines.record(self.state.history) or changed) and self.history is not None:
            self.history.submit_history(self.state.history)

    def _apply_scheduled(self, epoch: int) -> None:
        due = self.requests.due(epoch) if self.requests else []
        value = self.agreement.share(due[-1].value if due else None)
        if value is not None:
            late = " (requested after that epoch began)" if due and due[-1].at_epoch < epoch else ""
            self.steering.apply(value, due, self.requests, f"scheduled for epoch {epoch}{late}")

    def _end_epoch(self, epoch: int, step_logs) -> dict:
        state, model, cbs = self.state, self.model, self.callbacks
        step_logs = _pythonify(step_logs) if step_logs is not None else state.last_step_logs
        logs = metrics_or_step_logs(model, step_logs)
        state.last_step_logs = None
        if self.validation is not None and _should_validate(epoch, self.validation_freq):
            logs.update({f"val_{k}": v for k, v in self._evaluate().items()})
        stopped_early = model.stop_training
        if stopped_early and _before_end(state.step_in_epoch, self.train.steps_per_epoch):
            log.warning("a callback stopped training in the middle of epoch %d; the run ends here", epoch + 1)
        self._turn_began = time.monotonic()
        lr, seconds = self.saver.current_lr(), round(self.saver.epoch_seconds(), 3)
        epoch_hook = getattr(self.train, "on_epoch_end", None)  # a PyDataset's
        if epoch_hook:
            epoch_hook()
        # The callbacks first, as in fit (whose BackupAndRestore saves in on_epoch_end): the
        # epoch-end checkpoint holds what they did (LR lowered, best so far, CSV length, stop).
        # They get the logs themselves: keys they add (``learning_rate``) are logged, as fit's History does.
        if cbs:
            cbs.on_epoch_end(epoch, logs)
            logs = _pythonify(logs)
        record = {"epoch": epoch + 1, "global_step": state.global_step, "lr": lr, "wall_time": seconds,
                  "finished_at": time.time(), **logs}
        state.history["epochs"].append(record)
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_seconds = 0.0
        state.stopped_early = state.stopped_early or model.stop_training
        # (agreed before the save, so that a stop's notices are in the checkpoint it stops with)
        decided = self.agreement.now(self._local(self.steps_per_execution, self.train.steps_per_epoch))
        if decided.stop:
            self._record_notices()
        elif decided.notice_save:
            self.deadlines.record(state.history)  # (history.json follows with this epoch's record)
        saving = time.monotonic()
        number = self.saver.save("stopped by a callback" if model.stop_training else "epoch end")
        if self.history is not None:
            self.history.submit_history(state.history)
        if decided.notice_save:  # (a notice taken here: this save is its insurance; committed, and timed)
            self._committed(saving)
        self.progress.epoch_end(epoch, logs)
        if decided.stop and not self._done():  # (after the last epoch the run is complete: it ends as such)
            raise Interrupted(decided.stop, number, decided.sources)
        return logs

    def _done(self) -> bool:
        """Nothing left to train: every epoch done, a callback stopped the run, or the step limit."""
        state = self.state
        return state.epoch >= self.epochs or state.stopped_early or self._at_step_limit()

    def _evaluate(self) -> dict:
        model, cbs = self.model, self.callbacks
        steps, n, step, step_logs = self.validation.steps_per_epoch, self.steps_per_execution, 0, None
        if self._test_fn is None:
            self._test_fn = self._execution_function(model.test_step)
        if steps is None and self._test_to_end_fn is None:  # (validation data of unknown length: to its end)
            self._test_to_end_fn = self._to_end_function(model.test_step)
        model.reset_metrics()
        if cbs:
            cbs.on_test_begin()
        iterator = self._iterator(self.validation, 0, 0, training=False)
        while _before_end(step, steps):
            count = execution.length(step, steps, n)
            first = _next_if_any(iterator) if steps is None else None
            if steps is None and first is None:
                break
            begin, end = execution.batch_numbers(step, n)
            if self._batch_hooks:
                cbs.on_test_batch_begin(begin)
            if first is None:
                step_logs = self._test_fn(iterator, self._count(count))
            else:
                step_logs, count = _steps_to_end(self._test_to_end_fn, iterator, count - 1,
                                                 self._test_to_end_fn(iterator, first))
            if self._batch_hooks:
                cbs.on_test_batch_end(end, step_logs)
            step += count
        logs = metrics_or_step_logs(model, _pythonify(step_logs))
        if cbs:
            cbs.on_test_end(logs)
        return logs


def metrics_or_step_logs(model: keras.Model, step_logs: dict | None) -> dict:
    """An epoch's logs by ``model.fit``'s rule (Keras's ``_get_metrics_result_or_logs``): the
    metrics' results when the last step returned exactly their keys (a compiled model's steps
    do), else what the last step returned (a custom step may name its logs its own way)."""
    metrics = _pythonify(model.get_metrics_result())
    if step_logs is None or set(step_logs) == set(metrics):
        return metrics
    return dict(step_logs)


def _before_end(step_in_epoch: int, steps: int | None) -> bool:
    """Whether an epoch of ``steps`` steps (None: unknown yet) has steps after ``step_in_epoch``."""
    return steps is None or step_in_epoch < steps


def _next_if_any(feed):
    """The next batch as an optional, None at the data's end (data of unknown length)."""
    first = feed.get_next_as_optional()
    return first if bool(first.has_value()) else None


def _steps_to_end(step, feed, more: int, logs) -> tuple:
    """After an execution's first step (``logs``), up to ``more`` steps, one ``step(feed, batch)``
    each, fewer where the data ends; (the last step's logs, the execution's steps)."""
    done = 1
    while done <= more:
        batch = _next_if_any(feed)
        if batch is None:
            break
        logs, done = step(feed, batch), done + 1
    return logs, done


def _as_is(batch):
    return batch


def _data_checked(execute):
    """``execute``, where a check on the data inside it fails (an empty logical shard, a job's
    input pipeline that batches more than its share) ending as the DataError it stands for
    (exit 4) instead of TensorFlow's error."""
    def checked(*args):
        try:
            return execute(*args)
        except tf.errors.InvalidArgumentError as exc:
            error = failed_in_step(exc)
            if error is None:
                raise
            raise error from None
    return checked


def _should_validate(epoch: int, validation_freq) -> bool:
    """``model.fit``'s rule for the 0-based ``epoch``: every ``validation_freq``-th epoch, or the
    (1-based) epochs listed."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


@tf.autograph.experimental.do_not_convert  # (no control flow: spare each start AutoGraph's conversion)
def _first_local(strategy, outputs):
    """Step logs as this process's first replica saw them: no collective per step (an epoch's
    logs come from the metrics, aggregated over every replica, unless the step names its logs
    its own way: see ``metrics_or_step_logs``)."""
    return tf.nest.map_structure(lambda v: strategy.experimental_local_results(v)[0], outputs)


def _pythonify(logs) -> dict:
    out = {}
    for key, value in (logs or {}).items():
        if isinstance(value, dict):
            out.update(_pythonify(value))
            continue
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return out


