"""The BackupAndRestore-style Keras callback that saves at step boundaries.

Unlike ``keras.callbacks.BackupAndRestore`` it keeps the position inside the
epoch: with ``trainer.pipeline`` feeding only the remaining batches, a resumed
epoch continues exactly where it stopped. It saves every N steps and/or T
seconds, at every epoch end, and when a stop signal has been recorded; in the
last case it raises :class:`Interrupted` right after the checkpoint is
committed, so Keras neither validates nor ends the epoch.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import keras
import numpy as np
import tensorflow as tf

from .checkpoints import CheckpointStore
from .signals import StopRequest
from .state import TrainerState

log = logging.getLogger("trainer")


class Interrupted(Exception):
    def __init__(self, signum: int, checkpoint: int):
        super().__init__(f"interrupted by signal {signum}")
        self.signum = signum
        self.checkpoint = checkpoint


class ResumableCheckpoint(keras.callbacks.Callback):
    def __init__(self, state: TrainerState, state_var: tf.Variable, store: CheckpointStore,
                 stop: StopRequest, steps_per_epoch: int, save_every_steps: int | None = None,
                 save_every_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.state = state
        self.state_var = state_var
        self.store = store
        self.stop = stop
        self.steps_per_epoch = steps_per_epoch
        self.save_every_steps = save_every_steps
        self.save_every_seconds = save_every_seconds
        self.clock = clock
        self._last_save = clock()
        self._segment_start = clock()
        self.last_checkpoint: int | None = None

    # -- the checkpoint ------------------------------------------------------
    def save(self, reason: str) -> int:
        state = self.state
        now = self.clock()
        state.epoch_seconds += now - self._segment_start
        self._segment_start = now
        state.lr = float(np.asarray(self.model.optimizer.learning_rate))
        state.metric_state = ([float(np.asarray(v)).hex() for v in self.model.metrics_variables]
                              if state.step_in_epoch else [])
        self.state_var.assign(state.to_json())
        number = self.store.save({"global_step": state.global_step, "epoch": state.epoch,
                                  "step_in_epoch": state.step_in_epoch, "lr": state.lr,
                                  "reason": reason})
        self._last_save = self.clock()
        self.last_checkpoint = number
        log.debug("saved ckpt-%d (%s) at global step %d", number, reason, state.global_step)
        return number

    def restore_metric_state(self) -> None:
        """Continue the epoch's running loss/accuracy means where the interrupted run left them."""
        values = self.state.metric_state
        variables = self.model.metrics_variables
        if values and len(values) == len(variables):
            for var, value in zip(variables, values):
                var.assign(np.asarray(float.fromhex(value), dtype=var.dtype))

    # -- Keras hooks ---------------------------------------------------------
    def on_epoch_begin(self, epoch, logs=None):
        self._segment_start = self.clock()
        if self.state.step_in_epoch:
            self.restore_metric_state()

    def on_train_batch_end(self, batch, logs=None):
        state = self.state
        state.step_in_epoch += 1
        state.global_step += 1
        if self.stop.requested:
            number = self.save("signal")
            raise Interrupted(self.stop.signum, number)
        due_steps = self.save_every_steps and state.global_step % self.save_every_steps == 0
        due_time = self.save_every_seconds and self.clock() - self._last_save >= self.save_every_seconds
        if (due_steps or due_time) and state.step_in_epoch < self.steps_per_epoch:
            self.save("periodic")

    def on_epoch_end(self, epoch, logs=None):
        state = self.state
        now = self.clock()
        record = {"epoch": epoch + 1, "global_step": state.global_step,
                  "lr": float(np.asarray(self.model.optimizer.learning_rate)),
                  "wall_time": round(state.epoch_seconds + now - self._segment_start, 3),
                  "finished_at": time.time()}
        record.update({k: float(v) for k, v in (logs or {}).items()})
        state.history["epochs"].append(record)
        state.epoch += 1
        state.step_in_epoch = 0
        state.epoch_seconds = 0.0
        self._segment_start = now
        number = self.save("epoch end")
        if self.stop.requested:
            raise Interrupted(self.stop.signum, number)


class MonitorWriter(keras.callbacks.Callback):
    """Hands the history to the history writer after each epoch (placed after the
    checkpoint callback, so the epoch's checkpoint already holds it)."""

    def __init__(self, writer, state: TrainerState):
        super().__init__()
        self.writer = writer
        self.state = state

    def on_epoch_end(self, epoch, logs=None):
        self.writer.submit_history(self.state.history)
