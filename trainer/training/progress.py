"""Console output of the epochs, as ``model.fit`` shows it, or JSON lines for scripts; the events file either way.

``--log-format human`` (default) shows what ``fit`` shows, with Keras's own
``keras.utils.Progbar``: a progress bar in a terminal (or a notebook), one
line per epoch in a log file (``fit(verbose=2)``'s line: a SLURM output file
stays readable). ``--log-every-steps N`` adds a line every N steps to a log
file. ``--log-format json`` prints ``STEP {...}`` (every N steps) and
``EPOCH {...}`` lines instead of those lines (a terminal still gets its bar),
even with ``--quiet``, for scripts and log scrapers. The same records always
go to the run's :class:`~.events.Events` file.

The bar starts at the resumed position (e.g. 37/94), not at 0, and reads the
step's metrics only when it redraws (at most every ``REDRAW_S``): reading a
metric waits for the step to finish, which would stall an accelerator's queue
at every step. Every line is one write (see :meth:`Progress._line`).
"""
from __future__ import annotations

import json
import sys
import time

import keras
import numpy as np

from .events import NO_EVENTS, Events
from .execution import crossed
from .state import TrainerState

REDRAW_S = 0.25


def floats(logs) -> dict:
    """The logs that are numbers, as Python floats."""
    out = {}
    for key, value in (logs or {}).items():
        try:
            out[key] = float(np.asarray(value))
        except (TypeError, ValueError):
            continue
    return out


def format_logs(logs: dict) -> str:
    """``loss: 0.3512 - accuracy: 0.8821``: Keras's progress bar's rounding (4 decimals, or 4
    significant digits below 1e-3)."""
    return " - ".join(f"{k}: {v:.4f}" if abs(v) > 1e-3 else f"{k}: {v:.4e}" for k, v in floats(logs).items())


def is_terminal(stream) -> bool:
    """A terminal, or a notebook (whose output shows a redrawn bar as Keras's does)."""
    if "ipykernel" in sys.modules:
        return True
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Progress:
    def __init__(self, state: TrainerState, steps_per_epoch: int | None, epochs: int, quiet: bool,
                 log_every_steps: int | None = None, stream=None, machine: bool = False,
                 events: Events = NO_EVENTS):
        self.state = state
        self.steps_per_epoch = steps_per_epoch  # None: unknown until the first epoch ends (the loop sets it)
        self.epochs = epochs
        self.quiet = quiet
        self.log_every_steps = log_every_steps
        self.stream = stream or sys.stdout
        self.machine = machine  # --log-format json
        self.events = events
        self._terminal = is_terminal(self.stream)
        self._bar = None
        self._drawn = 0.0
        self._reached = 0  # the epoch's steps done so far (the bar's end when the length stays unknown)

    def epoch_begin(self, epoch: int) -> None:
        if self.quiet:
            return
        if self.machine or self.epochs > 1:  # (fit names the epoch when there are several)
            self._line(f"Epoch {epoch + 1}/{self.epochs}")
        if self.machine and not self._terminal:  # a log file gets the EPOCH (and STEP) lines, not a bar
            return
        # fit(verbose=1) in a terminal; fit(verbose=2) elsewhere: one line at the epoch's end
        self._reached = self.state.step_in_epoch
        self._bar = keras.utils.Progbar(self.steps_per_epoch, verbose=1 if self._terminal else 2)
        if self.state.step_in_epoch:
            self._bar.update(self.state.step_in_epoch, finalize=False)
        self._drawn = time.monotonic()

    def step(self, logs, steps_done: int) -> None:
        """After an execution of ``steps_done`` steps: a step record if it passed a multiple of
        ``--log-every-steps`` (with its last step's logs); the bar, if due."""
        state = self.state
        self._reached = state.step_in_epoch
        if crossed(state.global_step - steps_done, state.global_step, self.log_every_steps):
            values = floats(logs)
            record = {"epoch": state.epoch + 1, "step": state.step_in_epoch, "steps": self.steps_per_epoch,
                      "global_step": state.global_step, **{k: round(v, 6) for k, v in values.items()}}
            self.events.write("step", **record)
            if self.machine:
                self._line("STEP " + json.dumps(record))
            elif not (self.quiet or self._terminal):
                steps = self.steps_per_epoch or "Unknown"  # (Keras's bar says so too)
                self._line(f"{state.step_in_epoch:>{len(str(steps))}}/{steps} - {format_logs(values)}")
        if self._bar is not None and self._terminal and time.monotonic() - self._drawn >= REDRAW_S:
            self._bar.update(state.step_in_epoch, list(floats(logs).items()), finalize=False)
            self._drawn = time.monotonic()

    def epoch_end(self, epoch: int, logs: dict) -> None:
        values = floats(logs)
        record = {"epoch": epoch + 1, "epochs": self.epochs, "global_step": self.state.global_step}
        record.update({k: round(v, 6) for k, v in values.items()})
        if self._bar is not None:
            # (a length unknown when the bar began is known now, unless a callback stopped the epoch)
            self._bar.target = self.steps_per_epoch or self._reached
            self._bar.update(self._bar.target, list(values.items()), finalize=True)
            self._bar = None
        self.events.write("epoch", **record)
        if self.machine:
            self._line("EPOCH " + json.dumps(record))

    def _line(self, text: str) -> None:
        """One write per line: ``print`` writes the text and its newline separately, and on an
        unbuffered stream shared with the log a log line can land between the two."""
        self.stream.write(text + "\n")
        self.stream.flush()
