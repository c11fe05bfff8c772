"""When the loop saves: every N steps and/or T seconds, at every epoch end, on a
stop signal, after a learning-rate change; and what goes into each checkpoint
beside the variables (the trainer state: position, history, LR bookkeeping, the
callbacks' state)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from ..checkpoint.store import CheckpointStore
from .execution import crossed
from .state import TrainerState

log = logging.getLogger("trainer")


class Saver:
    def __init__(self, state: TrainerState, state_var: tf.Variable, store: CheckpointStore, optimizer,
                 steps_per_epoch: int, save_every_steps: int | None = None,
                 save_every_seconds: float | None = None, keep_every_epochs: int | None = None,
                 replicas: int = 1, clock: Callable[[], float] = time.monotonic, callback_states=None, data=None):
        self.state = state
        self.state_var = state_var
        self.store = store
        self.optimizer = optimizer
        self.steps_per_epoch = steps_per_epoch
        self.save_every_steps = save_every_steps
        self.save_every_seconds = save_every_seconds
        self.keep_every_epochs = keep_every_epochs
        self.replicas = replicas
        self.clock = clock
        self.callback_states = callback_states  # a trainer.callback_state.CallbackStates
        self.data = data  # a source whose iterator state goes into every checkpoint
        self._last_save = clock()
        self._segment_start = clock()
        self.last_checkpoint: int | None = None

    def current_lr(self) -> float:
        return float(np.asarray(self.optimizer.learning_rate))

    def epoch_seconds(self) -> float:
        """Training time of the current epoch so far, across resumes."""
        now = self.clock()
        self.state.epoch_seconds += now - self._segment_start
        self._segment_start = now
        return self.state.epoch_seconds

    def restart_clock(self) -> None:
        self._segment_start = self.clock()

    def steps_due(self, steps_done: int) -> bool:
        """Due by step count, after an execution of ``steps_done`` steps that passed a multiple of
        ``save_every_steps``: the same answer on every worker."""
        step = self.state.global_step
        return crossed(step - steps_done, step, self.save_every_steps)

    def time_due(self) -> bool:
        """Due by the clock: decided by one process (the chief) for all."""
        return bool(self.save_every_seconds) and self.clock() - self._last_save >= self.save_every_seconds

    def is_milestone(self) -> bool:
        state = self.state
        return (bool(self.keep_every_epochs) and state.step_in_epoch == 0 and state.epoch > 0
                and state.epoch % self.keep_every_epochs == 0)

    def save(self, reason: str) -> int:
        state = self.state
        self.epoch_seconds()
        state.lr = self.current_lr()
        if self.callback_states:
            state.callbacks = self.callback_states.capture()
        self.state_var.assign(state.to_json())
        if self.data is not None:
            self.data.capture()
        meta = {"global_step": state.global_step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                "lr": state.lr, "reason": reason, "replicas": self.replicas}
        if reason in ("epoch end", "stopped by a callback") and self.is_milestone():
            meta["milestone"] = True
        number = self.store.save(meta)
        self._last_save = self.clock()
        self.last_checkpoint = number
        log.debug("saved ckpt-%d (%s) at global step %d", number, reason, state.global_step)
        return number
