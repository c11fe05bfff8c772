"""The training loop: epochs of ``model.train_step`` under any ``tf.distribute`` strategy.

Why not ``model.fit``: Keras 3's fit fails under MultiWorkerMirroredStrategy
("unsupported type PerReplica", keras-team/keras#20585), and a resumed epoch
needs the position, not just the epoch. This loop calls the model's own
``train_step``/``test_step`` (so compile settings, custom steps and metrics
work) through ``strategy.run`` inside a ``tf.function``, like Keras's
``make_train_function`` with one step per call, and drives the user's Keras
callbacks at the usual hooks. It reads nothing back from a step unless
someone asks (the progress bar's redraws, batch callbacks), so steps queue
up as in ``fit``.

At step boundaries it acts on what the processes agreed (see
``trainer.distribute``; one process decides alone at every step, several
agree every 8th step): a stop signal (save and raise :class:`Interrupted`),
a time-based save, a live learning-rate change. Saves due by step count and
epoch-end saves need no agreement: every process reaches them at the same step.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

from .data import Replicas
from .distribute import Agreement, Decisions
from .monitor import HistoryWriter
from .progress import Progress
from .saver import Saver
from .signals import StopRequest
from .state import TrainerState
from .steering import LrRequests, Steering

log = logging.getLogger("trainer")


class Interrupted(Exception):
    def __init__(self, signum: int, checkpoint: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint


@dataclass
class Loop:
    model: keras.Model
    strategy: tf.distribute.Strategy
    replicas: Replicas
    train: object                  # a trainer.data source
    validation: object | None
    seed: int
    epochs: int
    state: TrainerState
    saver: Saver
    stop: StopRequest
    agreement: Agreement
    progress: Progress
    steering: Steering
    requests: LrRequests | None    # the chief's view of the run dir's LR requests
    history: HistoryWriter | None  # the chief writes history.json/png
    callbacks: keras.callbacks.CallbackList | None = None

    def __post_init__(self):
        self._train_fn, self._train_agreeing_fn = self._make_train_functions()
        self._test_fn = None
        self._batch_hooks = bool(self.callbacks and self.callbacks.callbacks)

    # -- tf.functions -----------------------------------------------------
    def _make_train_functions(self):
        """A step, and (several workers) a step that also sums the agreement vector."""
        strategy, model, agreement = self.strategy, self.model, self.agreement

        def one_step(data):
            return _first_local(strategy, strategy.run(model.train_step, args=(data,)))
        if not model.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))

        @tf.function(reduce_retracing=True)
        def train(iterator):
            return one_step(next(iterator))

        if not agreement.fused:
            return train, None

        @tf.function(reduce_retracing=True)
        def train_agreeing(iterator, flags):
            logs = one_step(next(iterator))
            return logs, agreement.reduce_in_step(strategy, flags)
        return train, train_agreeing

    def _make_test_function(self):
        strategy, model = self.strategy, self.model

        def one_step(data):
            strategy.run(model.test_step, args=(data,))
        if not model.run_eagerly:
            one_step = tf.function(one_step, reduce_retracing=True, jit_compile=bool(model.jit_compile))

        @tf.function(reduce_retracing=True)
        def test(iterator):
            one_step(next(iterator))
        return test

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
            cbs.on_train_begin()
        logs: dict = {}
        self.model.stop_training = False
        while self.state.epoch < self.epochs and not self.state.stopped_early:
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
        for step in range(start, steps):
            if self._batch_hooks:
                cbs.on_train_batch_begin(step)
            logs, decided = self._step(iterator)
            if self._batch_hooks:
                cbs.on_train_batch_end(step, logs)
            self.progress.step(logs)
            self._boundary(decided, steps)
            if model.stop_training:
                break
        return self._end_epoch(epoch)

    def _step(self, iterator):
        """One step; (its logs, what every process does at the boundary after it)."""
        state, agreement = self.state, self.agreement
        if not agreement.fused:  # one process: its own decisions
            logs = self._train_fn(iterator)
            state.step_in_epoch += 1
            state.global_step += 1
            return logs, self._local()
        if (state.global_step + 1) % agreement.every:  # between agreements: nothing to decide
            logs = self._train_fn(iterator)
            decided = Decisions()
        else:
            logs, agreed = self._train_agreeing_fn(iterator, agreement.local_flags(self._local()))
            decided = agreement.decide(self._local(), agreed)
        state.step_in_epoch += 1
        state.global_step += 1
        return logs, decided

    def _local(self) -> Decisions:
        """What this process would decide alone at this boundary."""
        req = self.requests.immediate() if self.requests else None
        return Decisions(stop=self.stop.signum, save=self.saver.time_due(), lr=req.value if req else None,
                         requests=[req] if req else [])

    def _boundary(self, decided: Decisions, steps: int) -> None:
        state = self.state
        if decided.lr is not None:
            self.steering.apply(decided.lr, decided.requests, self.requests, "live")
        if decided.stop:
            number = self.saver.save("signal")
            raise Interrupted(decided.stop, number)
        if (self.saver.steps_due() or decided.save) and state.step_in_epoch < steps:
            self.saver.save("periodic")

    def _apply_scheduled(self, epoch: int) -> None:
        due = self.requests.due(epoch) if self.requests else []
        value = self.agreement.share(due[-1].value if due else None)
        if value is not None:
            late = " (requested after that epoch began)" if due and due[-1].at_epoch < epoch else ""
            self.steering.apply(value, due, self.requests, f"scheduled for epoch {epoch}{late}")

    def _end_epoch(self, epoch: int) -> dict:
        state, model, cbs = self.state, self.model, self.callbacks
        logs = _pythonify(model.get_metrics_result())
        if self.validation is not None:
            logs.update({f"val_{k}": v for k, v in self._evaluate().items()})
        stopped_early = model.stop_training
        if stopped_early and state.step_in_epoch < self.train.steps_per_epoch:
            log.warning("a callback stopped training in the middle of epoch %d; the run ends here", epoch + 1)
        record = {"epoch": epoch + 1, "global_step": state.global_step, "lr": self.saver.current_lr(),
                  "wall_time": round(self.saver.epoch_seconds(), 3), "finished_at": time.time(), **logs}
        epoch_hook = getattr(self.train, "on_epoch_end", None)  # a PyDataset's
        if epoch_hook:
            epoch_hook()
        state.history["epochs"].append(record)
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_seconds = 0.0
        number = self.saver.save("epoch end")
        if self.history is not None:
            self.history.submit_history(state.history)
        self.progress.epoch_end(epoch, logs)
        if cbs:
            cbs.on_epoch_end(epoch, dict(logs))
        if model.stop_training and not state.stopped_early:
            state.stopped_early = True
            number = self.saver.save("stopped by a callback")
        stop = self.agreement.now(Decisions(stop=self.stop.signum)).stop
        if stop:
            raise Interrupted(stop, number)
        return logs

    def _evaluate(self) -> dict:
        model, cbs = self.model, self.callbacks
        if self._test_fn is None:
            self._test_fn = self._make_test_function()
        model.reset_metrics()
        if cbs:
            cbs.on_test_begin()
        iterator = self._iterator(self.validation, 0, 0, training=False)
        for step in range(self.validation.steps_per_epoch):
            if self._batch_hooks:
                cbs.on_test_batch_begin(step)
            self._test_fn(iterator)
            if self._batch_hooks:
                cbs.on_test_batch_end(step)
        logs = _pythonify(model.get_metrics_result())
        if cbs:
            cbs.on_test_end(logs)
        return logs


def _first_local(strategy, outputs):
    """Step logs as this process's first replica saw them: no collective per step (the
    epoch's logs are read from the metrics, aggregated over every replica)."""
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


