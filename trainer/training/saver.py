"""When the loop saves: every N steps and/or T seconds, at every epoch end, on a
stop signal, after a learning-rate change; and what goes into each checkpoint
beside the variables (the trainer state: position, history, LR bookkeeping, the
callbacks' state)."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..checkpoint.store import CheckpointStore
from .execution import crossed
from .state import TrainerState

log = logging.getLogger("trainer")


@dataclass(frozen=True)
class SaveSchedule:
    """When the loop saves (besides epoch ends and stops), and which epoch ends are milestones
    that retention keeps: the run's settings, fixed for the run."""
    every_steps: int | None = None
    every_seconds: float | None = None
    keep_every_epochs: int | None = None


@dataclass
class CheckpointContents:
    """What a save puts into a checkpoint beside the model's variables: the trainer state
    (serialized into ``state_var``), the optimizer's current learning rate, the callbacks'
    state, and the replica count the steps so far were taken with."""
    state_var: tf.Variable
    optimizer: object
    callback_states: object = None  # a trainer.training.callback_state.CallbackStates
    replicas: int = 1
    data: object = None  # a data source whose iterator state goes into every checkpoint (StreamingData)


class Saver:
    """Decides when the loop saves and what metadata each checkpoint gets; the store writes it."""

    def __init__(self, state: TrainerState, store: CheckpointStore, contents: CheckpointContents,
                 schedule: SaveSchedule = SaveSchedule(), clock: Callable[[], float] = time.monotonic):
        self.state = state
        self.store = store
        self.contents = contents
        self.schedule = schedule
        self.clock = clock
        self._last_save = clock()
        self._segment_start = clock()
        self.last_checkpoint: int | None = None

    def current_lr(self) -> float:
        return float(np.asarray(self.contents.optimizer.learning_rate))

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
        return crossed(step - steps_done, step, self.schedule.every_steps)

    def time_due(self) -> bool:
        """Due by the clock: decided by one process (the chief) for all."""
        every = self.schedule.every_seconds
        return bool(every) and self.clock() - self._last_save >= every

    def is_milestone(self) -> bool:
        state = self.state
        every = self.schedule.keep_every_epochs
        return bool(every) and state.step_in_epoch == 0 and state.epoch > 0 and state.epoch % every == 0

    def save(self, reason: str) -> int:
        state = self.state
        self.epoch_seconds()
        state.lr = self.current_lr()
        contents = self.contents
        if contents.callback_states:
            state.callbacks = contents.callback_states.capture()
        contents.state_var.assign(state.to_json())
        data = contents.data
        if data is not None and (self.store.writes or data.collective_capture):  # (the chief's is written)
            data.capture(self.store.writes)
        meta = {"global_step": state.global_step, "epoch": state.epoch, "step_in_epoch": state.step_in_epoch,
                "lr": state.lr, "reason": reason, "replicas": contents.replicas}
        if reason in ("epoch end", "stopped by a callback") and self.is_milestone():
            meta["milestone"] = True
        number = self.store.save(meta)
        self._last_save = self.clock()
        self.last_checkpoint = number
        log.debug("saved ckpt-%d (%s) at global step %d", number, reason, state.global_step)
        return number
