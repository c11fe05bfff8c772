"""Console output: a Keras progress bar per epoch and one JSON line per epoch.

The bar starts at the resumed position (e.g. 37/94), not at 0. The line
``EPOCH {...}`` is printed even with ``--quiet`` so scripts and log scrapers
can follow a run.
"""
from __future__ import annotations

import json
import sys

import keras

from .state import TrainerState


class ProgressLogger(keras.callbacks.Callback):
    def __init__(self, state: TrainerState, steps_per_epoch: int, epochs: int, quiet: bool,
                 stream=None):
        super().__init__()
        self.state = state
        self.steps_per_epoch = steps_per_epoch
        self.epochs = epochs
        self.quiet = quiet
        self.stream = stream or sys.stdout
        self._bar = None

    def on_epoch_begin(self, epoch, logs=None):
        if self.quiet:
            return
        print(f"Epoch {epoch + 1}/{self.epochs}", file=self.stream, flush=True)
        self._bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=["loss", "accuracy"])
        if self.state.step_in_epoch:
            self._bar.update(self.state.step_in_epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self._bar is not None:
            values = [(k, float(v)) for k, v in (logs or {}).items() if k in ("loss", "accuracy")]
            # the checkpoint callback runs first and has already counted this step
            self._bar.update(self.state.step_in_epoch, values)

    def on_epoch_end(self, epoch, logs=None):
        record = {"epoch": epoch + 1, "epochs": self.epochs, "global_step": self.state.global_step}
        record.update({k: round(float(v), 6) for k, v in (logs or {}).items()})
        if self._bar is not None:
            self._bar.update(self.steps_per_epoch, [(k, v) for k, v in record.items()
                                                    if k in ("loss", "accuracy", "val_loss", "val_accuracy")],
                             finalize=True)
            self._bar = None
        print("EPOCH " + json.dumps(record), file=self.stream, flush=True)
