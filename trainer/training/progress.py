"""Console output: a progress bar per epoch, optional step lines, one JSON line per epoch.

The bar starts at the resumed position (e.g. 37/94), not at 0, and reads the
step's metrics only when it redraws (at most every ``REDRAW_S``): reading a
metric waits for the step to finish, which would stall an accelerator's queue
at every step. ``--log-every-steps N`` prints ``STEP {...}`` every N steps for
logs that are not a terminal (SLURM output files), which get no bar. ``EPOCH {...}`` is printed
even with ``--quiet`` so scripts and log scrapers can follow a run.
"""
from __future__ import annotations

import json
import sys
import time

import keras
import numpy as np

from .execution import crossed
from .state import TrainerState

REDRAW_S = 0.25


def _floats(logs) -> dict:
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return out


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, state: TrainerState, steps_per_epoch: int, epochs: int, quiet: bool,
                 log_every_steps: int | None = None, stream=None):
        self.state = state
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.quiet = quiet
        self.log_every_steps = log_every_steps
        self.stream = stream or sys.stdout
        self._bar = None
        self._drawn = 0.0

    def epoch_begin(self, epoch: int) -> None:
        if self.quiet:
            return
        self._line(f"Epoch {epoch + 1}/{self.epochs}")
        if not _is_terminal(self.stream):  # a log file gets the EPOCH (and STEP) lines, not a bar
            return
        self._bar = keras.utils.Progbar(self.steps_per_epoch)
        if self.state.step_in_epoch:
            self._bar.update(self.state.step_in_epoch)
        self._drawn = time.monotonic()

    def step(self, logs, steps_done: int) -> None:
        """After an execution of ``steps_done`` steps: a STEP line if it passed a multiple of
        ``--log-every-steps`` (with its last step's logs)."""
        state = self.state
        if crossed(state.global_step - steps_done, state.global_step, self.log_every_steps):
            record = {"epoch": state.epoch + 1, "step": state.step_in_epoch, "steps": self.steps_per_epoch,
                      "global_step": state.global_step, **{k: round(v, 6) for k, v in _floats(logs).items()}}
            self._line("STEP " + json.dumps(record))
        if self._bar is not None and time.monotonic() - self._drawn >= REDRAW_S:
            self._bar.update(state.step_in_epoch, list(_floats(logs).items()))
            self._drawn = time.monotonic()

    def epoch_end(self, epoch: int, logs: dict) -> None:
        record = {"epoch": epoch + 1, "epochs": self.epochs, "global_step": self.state.global_step}
        record.update({k: round(v, 6) for k, v in _floats(logs).items()})
        if self._bar is not None:
            self._bar.update(self.steps_per_epoch, [(k, v) for k, v in _floats(logs).items()], finalize=True)
            self._bar = None
        self._line("EPOCH " + json.dumps(record))

    def _line(self, text: str) -> None:
        """One write per line: ``print`` writes the text and its newline separately, and on an
        unbuffered stream shared with the log a log line can land between the two."""
        self.stream.write(text + "\n")
        self.stream.flush()
