"""A user's own job, as the tests copy it to a temporary folder outside the repo.

Synthetic data through ``trainer.EpochBatches`` (a Python generator), a Model
subclass with its own ``train_step`` (it counts its calls in a variable that
checkpoints hold), Dropout, a Keras callback that appends every epoch end to
a file and, with ``--plateau``, a ReduceLROnPlateau whose state must survive a
resume. Two settings make timing-free tests possible: ``sleep_s`` makes
every batch take at least that long to produce (a run of N steps cannot end
sooner than N * sleep_s, on any machine), and ``gate`` names a file holding
how many batches the generator may produce so far (a test decides exactly
where the run can be).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import keras
import numpy as np

import trainer
from trainer import setting

EPOCHS = 3
FEATURES, CLASSES = 8, 4


@dataclass
class Settings:
    examples: int = 1024
    batch_size: int = 32
    steps_per_execution: int = setting(1, may_change=True, help="steps per tf.function call (compile's)")
    hidden: int = 32
    dropout: float = 0.2
    lr: float = setting(0.05, may_change=True)
    sleep_s: float = setting(0.0, may_change=True, help="seconds each batch takes at least")
    gate: str | None = setting(None, may_change=True, help="file with the number of batches allowed")
    epoch_log: str | None = setting(None, may_change=True, help="file the callback appends epoch ends to")
    plateau: bool = False  # a ReduceLROnPlateau that halves the rate after every epoch but the first


class CountingMLP(keras.Model):
    def __init__(self, hidden: int, dropout: float):
        super().__init__(name="counting_mlp")
        self.hidden = keras.layers.Dense(hidden, activation="relu")
        self.drop = keras.layers.Dropout(dropout)
        self.head = keras.layers.Dense(CLASSES, activation="softmax")
        self.custom_steps = self.add_weight(shape=(), initializer="zeros", trainable=False, name="custom_steps")

    def call(self, x, training=False):
        return self.head(self.drop(self.hidden(x), training=training))

    def train_step(self, data):
        self.custom_steps.assign_add(1.0)
        return super().train_step(data)


class EpochLog(keras.callbacks.Callback):
    def __init__(self, path: str):
        super().__init__()
        self.path = path

    def on_epoch_end(self, epoch, logs=None):
        with open(self.path, "a") as fh:
            fh.write(f"epoch {epoch + 1} loss {logs['loss']:.6f}\n")


def build_model(s: Settings) -> keras.Model:
    model = CountingMLP(s.hidden, s.dropout)
    model.compile(optimizer=keras.optimizers.SGD(s.lr, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=s.steps_per_execution)
    return model


def _examples(n: int, seed: int):
    """Points and the class of a fixed linear map (the same for training and validation)."""
    x = np.random.default_rng(seed).normal(size=(n, FEATURES)).astype(np.float32)
    w = np.random.default_rng(1234).normal(size=(FEATURES, CLASSES))
    return x, np.argmax(x @ w, axis=1).astype(np.int32)


def _allowed(gate: str) -> int:
    try:
        with open(gate) as fh:
            return int(fh.read().strip() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def build_data(s: Settings):
    x, y = _examples(s.examples, 0)
    steps = s.examples // s.batch_size

    def batches(epoch: int, start_step: int, seed: int):
        order = np.random.default_rng([seed, epoch]).permutation(s.examples)
        for step in range(start_step, steps):
            if s.sleep_s:
                time.sleep(s.sleep_s)
            if s.gate:
                while _allowed(s.gate) <= epoch * steps + step:
                    time.sleep(0.005)
            idx = order[step * s.batch_size:(step + 1) * s.batch_size]
            yield x[idx], y[idx]

    vx, vy = _examples(256, 1)
    return trainer.EpochBatches(batches, steps), trainer.ArrayData(vx, vy, batch_size=64, shuffle=False)


def callbacks(s: Settings):
    cbs = [EpochLog(s.epoch_log)] if s.epoch_log else []
    if s.plateau:  # (no epoch improves the loss by 10: its wait counter decides, and must resume)
        cbs.append(keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=1, min_delta=10.0))
    return cbs
