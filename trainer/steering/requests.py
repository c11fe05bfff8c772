"""Live learning-rate changes: requests polled from the run dir, applied at step boundaries.

A background thread lists the run directory every ``poll_s`` seconds (one
cheap request for an object store) and reads any request file; the training
loop only looks at what it found. Applying happens on the training thread at
a step boundary: assign the rate, record it in the history, save a checkpoint
holding it, wait until that checkpoint is committed, and only then mark the
file consumed, so a request is applied exactly once across any crash.
"""
from __future__ import annotations

import logging
import threading
import time

import keras

from ..storage import StorageError
from ..training import history as monitor
from ..training.state import TrainerState
from . import lr_override
from .lr_override import OverrideError, Request

log = logging.getLogger("trainer")


class LrRequests:
    """The pending requests of a run dir; ``start()`` polls them in the background."""

    def __init__(self, storage, poll_s: float):
        self.storage = storage
        self.poll_s = poll_s
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._complained: set[str] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[Request]:
        """Scan now (at start: a malformed file raises OverrideError, nothing is trained)."""
        found = lr_override.scan(self.storage)
        with self._lock:
            self._requests = found
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="lr-requests", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()

    def _poll(self) -> None:
        seen = {r.digest for r in self._requests}
        while not self._done.wait(self.poll_s):
            try:
                for req in self.refresh():
                    if req.digest not in seen:
                        seen.add(req.digest)
                        when = ("at the next step boundary" if req.at_epoch is None
                                else f"when epoch {req.at_epoch} begins")
                        log.info("found a learning-rate request in %s: %g, applied %s",
                                 self.storage.url(req.name), req.value, when)
            except OverrideError as exc:  # a typo while training: say so once, keep training
                if str(exc) not in self._complained:
                    self._complained.add(str(exc))
                    log.error("ignoring a learning-rate request: %s", exc)
            except (StorageError, OSError) as exc:
                log.warning("could not check %s for learning-rate requests: %s", self.storage.root, exc)

    def drop(self, req: Request) -> None:
        with self._lock:
            self._requests = [r for r in self._requests if r.name != req.name]

    def immediate(self) -> Request | None:
        with self._lock:
            return next((r for r in self._requests if r.at_epoch is None), None)

    def due(self, epoch: int) -> list[Request]:
        """Scheduled requests for ``epoch`` or an earlier one (those came late), oldest first."""
        with self._lock:
            return sorted((r for r in self._requests if r.at_epoch is not None and r.at_epoch <= epoch),
                          key=lambda r: r.at_epoch)


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
            monitor.add_event(state.history, "lr_change", epoch=state.epoch, step_in_epoch=state.step_in_epoch,
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
