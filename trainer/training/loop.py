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

One class, a little over the usual module size, on purpose: its phases (epoch,
execution, boundary, epoch end, evaluation) share the compiled step functions
and the position, which split modules would have to pass back and forth.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import keras
import numpy as np
import tensorflow as tf

from ..cluster.distribute import Agreement, Decisions
from ..data.sources import SINGLE, Replicas
from ..steering.requests import LrRequests
from ..steering.signals import StopRequest
from . import execution
from .callback_state import CallbackStates
from .deadline import Deadlines
from .history import HistoryWriter
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
        self._train_fn, self._train_agreeing_fn = self._make_train_functions()
        self._train_step = self._step_function(self.model.train_step)  # (for a feed read step by step)
        self._test_fn = None
        self._counts: dict[int, tf.Tensor] = {}
        self._batch_hooks = bool(self.callbacks and self.callbacks.callbacks)
        self.deadlines = self.deadlines or Deadlines(self.stop)
        self._timed_once = False
        self._turn_began: float | None = None  # when the last epoch's end began

    # -- tf.functions -----------------------------------------------------
    def _make_train_functions(self):
        """An execution, and (several workers) an execution that also sums the agreement vector."""
        strategy, model, agreement = self.strategy, self.model, self.agreement
        train = self._execution_function(model.train_step)
        if not agreement.fused:
            return train, None

        @tf.function(reduce_retracing=True)
        def train_agreeing(iterator, count, flags):
            logs = train(iterator, count)
            return logs, agreement.reduce_in_step(strategy, flags)
        return train, train_agreeing

    def _make_test_function(self):
        return self._execution_function(self.model.test_step)

    def _step_function(self, step_fn):
        """One step of ``step_fn`` on a batch; its logs."""
        strategy, model = self.strategy, self.model

        def one_step(data):
            return _first_local(strategy, strategy.run(step_fn, args=(data,)))
        if not model.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))
        return one_step

    def _execution_function(self, step_fn):
        """``count`` steps of ``step_fn`` in one call (a tensor, so a shorter execution does not
        retrace); the last step's logs. With one step per execution the graph has no loop."""
        single = self.steps_per_execution == 1
        one_step = self._step_function(step_fn)

        @tf.function(reduce_retracing=True)
        def execute(iterator, count):
            logs = one_step(next(iterator))
            if not single:
                for _ in tf.range(count - 1):
                    logs = one_step(next(iterator))
            return logs
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
        steps = self.train.steps_per_epoch
        if start == 0:
            model.reset_metrics()  # mid-epoch, the restored running totals continue
            self._apply_scheduled(epoch)
        self.saver.restart_clock()
        if cbs:
            cbs.on_epoch_begin(epoch)
        self.progress.epoch_begin(epoch)
        # (a stop after an epoch's last step resumes with no step left: straight to the epoch's end)
        iterator = self._iterator(self.train, epoch, start, training=True) if start < steps else None
        if self._turn_began is not None:  # (from the last epoch's end to this epoch's first step)
            self.deadlines.measure_epoch_turn(time.monotonic() - self._turn_began)
            self._turn_began = None
        logs = None  # the last execution's logs, as train_step returned them
        n = self.steps_per_execution
        while state.step_in_epoch < steps:
            count = execution.length(state.step_in_epoch, steps, n)
            if self.max_steps is not None:  # (--max-steps ends the run inside an execution)
                count = min(count, self.max_steps - state.global_step)
            begin, end = execution.batch_numbers(state.step_in_epoch, n)
            if self._batch_hooks:
                cbs.on_train_batch_begin(begin)
            started = time.monotonic()
            logs, decided = self._execute(iterator, count, steps)
            self._measure(time.monotonic() - started, count)
            if self._batch_hooks:
                cbs.on_train_batch_end(end, logs)
            self.progress.step(logs, count)
            self._boundary(decided, steps, count, logs)
            if model.stop_training or self._at_step_limit():
                break
        if self._at_step_limit() and state.step_in_epoch < steps and not model.stop_training:
            self.saver.save("step limit")  # mid-epoch: the run ends here, the epoch stays open
            return {}
        return self._end_epoch(epoch, logs)

    def _at_step_limit(self) -> bool:
        return self.max_steps is not None and self.state.global_step >= self.max_steps

    def _execute(self, iterator, count: int, steps: int):
        """One execution of ``count`` steps; (its logs, what every process does at the boundary
        after it)."""
        state, agreement = self.state, self.agreement
        count_t = self._count(count)
        agreeing = agreement.fused and execution.crossed(state.global_step, state.global_step + count,
                                                         agreement.every)
        if agreeing:  # (decided before the execution: a stop must leave room for it and the next agreement)
            local = self._local(count + agreement.every + self.steps_per_execution - 1, steps)
        if getattr(iterator, "read_eagerly", False):  # (a feed of Python logic: its steps one by one)
            for _ in range(count):
                logs = self._train_step(next(iterator))
            agreed = agreement.now_flags(agreement.local_flags(local)) if agreeing else None
        elif agreeing:
            logs, agreed = self._train_agreeing_fn(iterator, count_t, agreement.local_flags(local))
        else:
            logs = self._train_fn(iterator, count_t)
        state.step_in_epoch += count
        state.global_step += count
        if agreeing:
            decided = agreement.decide(local, agreed)
            self.deadlines.measure_save(decided.save_seconds)
            return logs, decided
        # one process decides alone at every boundary; several decide nothing between agreements
        return logs, Decisions() if agreement.fused else self._local(self.steps_per_execution, steps)

    def _measure(self, seconds: float, count: int) -> None:
        """A step's time, for stops before a deadline (not the first execution's: it traces)."""
        if self._timed_once:
            self.deadlines.measure_steps(seconds, count)
        self._timed_once = True

    def _count(self, count: int) -> tf.Tensor:
        """``count`` as a tensor, made once (a Python int would retrace the function per value)."""
        if count not in self._counts:
            self._counts[count] = tf.constant(count, tf.int32)
        return self._counts[count]

    def _local(self, steps_ahead: int, steps: int) -> Decisions:
        """What this process would decide alone at this boundary, were the next decision
        ``steps_ahead`` steps away."""
        req = self.requests.immediate() if self.requests else None
        state = self.state
        turn = state.step_in_epoch == 0 or state.step_in_epoch + steps_ahead >= steps  # (at or before an epoch's end)
        extra = self.deadlines.epoch_turn_seconds if turn else 0.0
        notices = self.deadlines.local({"position": state.epoch + state.step_in_epoch / steps,
                                        "global_step": state.global_step}, steps_ahead, extra)
        return Decisions(stop=notices.stop, save=self.saver.time_due(), lr=req.value if req else None,
                         requests=[req] if req else [], notice_save=notices.save, sources=notices.sources,
                         save_seconds=self.deadlines.save_seconds)

    def _boundary(self, decided: Decisions, steps: int, count: int, logs) -> None:
        state = self.state
        if decided.lr is not None:
            self.steering.apply(decided.lr, decided.requests, self.requests, "live")
        if decided.stop:
            if state.step_in_epoch == steps:  # the resumed run starts at this epoch's end, without a step
                state.last_step_logs = _pythonify(logs)
            self._record_notices()
            number = self.saver.save("notice" if decided.sources else "signal")
            raise Interrupted(decided.stop, number, decided.sources)
        if decided.notice_save:
            self._notice_save()
        elif (self.saver.steps_due(count) or decided.save) and state.step_in_epoch < steps:
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
        if stopped_early and state.step_in_epoch < self.train.steps_per_epoch:
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
        if self._test_fn is None:
            self._test_fn = self._make_test_function()
        model.reset_metrics()
        if cbs:
            cbs.on_test_begin()
        iterator = self._iterator(self.validation, 0, 0, training=False)
        steps, n, step, step_logs = self.validation.steps_per_epoch, self.steps_per_execution, 0, None
        while step < steps:
            count = execution.length(step, steps, n)
            begin, end = execution.batch_numbers(step, n)
            if self._batch_hooks:
                cbs.on_test_batch_begin(begin)
            step_logs = self._test_fn(iterator, self._count(count))
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


def _should_validate(epoch: int, validation_freq) -> bool:
    """``model.fit``'s rule for the 0-based ``epoch``: every ``validation_freq``-th epoch, or the
    (1-based) epochs listed."""
    if isinstance(validation_freq, int):
        return (epoch + 1) % validation_freq == 0
    return epoch + 1 in validation_freq


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


