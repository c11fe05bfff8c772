"""Applying a learning-rate request at a step boundary, on the training thread.

Assign the rate, record it in the history, save a checkpoint holding it, wait
until that checkpoint is committed, and only then mark the request file
consumed, so a request is applied exactly once across any crash.
"""
from __future__ import annotations

import logging
import time

import keras

from ..steering import lr_override
from ..steering.lr_override import OverrideError, Request
from ..steering.requests import LrRequests
from .history_format import add_event
from .state import TrainerState

log = logging.getLogger("trainer")


class Steering:
    """Applies learning-rate requests to the model, the state and the run dir."""

    def __init__(self, optimizer, state: TrainerState, saver, writers, storage, steps_per_epoch: int,
                 is_chief: bool = True):
        self.optimizer = optimizer
        self.state = state
        self.saver = saver
        self.writers = writers
        self.storage = storage
        self.steps = steps_per_epoch
        self.is_chief = is_chief

    def check_assignable(self, source: str) -> None:
        if isinstance(getattr(self.optimizer, "_learning_rate", None),
                      keras.optimizers.schedules.LearningRateSchedule):
            raise OverrideError(f"{source}: the job's optimizer follows a learning-rate schedule "
                                f"({type(self.optimizer._learning_rate).__name__}); a request can only "
                                "replace a constant learning rate (compile with learning_rate=<number>)")

    def apply(self, value: float, reqs: list[Request], requests: LrRequests | None, when: str) -> None:
        """Set the rate to ``value`` now (a step boundary), save, wait for the commit, then mark the
        request files ``reqs`` consumed. Every worker calls this at the same boundary (saves are
        collective); only the chief has the files."""
        state = self.state
        new = [r for r in reqs if r.digest not in state.applied_overrides]
        if reqs and not new:
            log.info("%s (%g) was already applied before the last stop; marking it consumed",
                     ", ".join(r.name for r in reqs), value)
        else:
            source = ", ".join(self.storage.url(r.name) for r in new) or "the chief's request"
            self.check_assignable(source)
            old = self.saver.current_lr()
            self.optimizer.learning_rate.assign(value)
            log.info("learning rate %g -> %g (%s, from %s, at %s)", old, value, when, source,
                     state.position(self.steps))
            add_event(state.history, "lr_change", epoch=state.epoch, step_in_epoch=state.step_in_epoch,
                      steps_per_epoch=self.steps, global_step=state.global_step, to=value,
                      time=time.time(), **{"from": old})
            state.applied_overrides.extend(r.digest for r in new)
        self.saver.save("lr change")  # the new rate is durable before the files are marked consumed
        self.writers.flush("lr change")
        for req in reqs:
            if requests is not None:
                requests.drop(req)
            if self.is_chief:
                lr_override.mark_consumed(self.storage, req, state.global_step)
