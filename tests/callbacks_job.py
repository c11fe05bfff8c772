"""A job with every stateful Keras callback, for the callback-state tests.

Tiny synthetic data (16 steps per epoch). ``ReduceLROnPlateau`` and
``EarlyStopping`` watch the training loss with a ``min_delta`` no epoch can
beat, so only the first epoch counts as an improvement: the rate is lowered
after a fixed number of epochs of patience and training stops after a fixed
epoch, whatever the numbers are, and a resumed callback that forgot its
counters would act later. ``ModelCheckpoint`` keeps the best ``val_loss``
(real improvements) and, a second one, every 7th batch. ``gate`` names a file
holding how many batches may be produced so far (see tests/user_job.py).
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

import keras
import numpy as np

import trainer
from tests.user_job import CLASSES, FEATURES, _allowed, _examples  # the user job's data and gate
from trainer import setting

EPOCHS = 8
EXAMPLES, BATCH = 512, 32
NEVER = 10.0  # a min_delta no epoch's loss improves by


@dataclass
class Settings:
    out: str | None = setting(None, may_change=True, help="folder for the callbacks' files")
    gate: str | None = setting(None, may_change=True, help="file with the number of batches allowed")
    lr_patience: int = 2
    lr_cooldown: int = 0
    stop_patience: int = 6


class LossTally(keras.callbacks.Callback):
    """A user callback that keeps its state with the trainer's protocol."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.epochs, self.total = 0, 0.0

    def get_state(self):
        return {"epochs": self.epochs, "total": self.total}

    def set_state(self, state):
        self.epochs, self.total = state["epochs"], state["total"]

    def on_epoch_end(self, epoch, logs=None):
        self.epochs += 1
        self.total += logs["loss"]
        with open(self.path, "a") as fh:
            fh.write(f"epoch {epoch + 1}: {self.epochs} epochs, total loss {self.total!r}\n")


class Unkept(keras.callbacks.Callback):
    """Stateful, without the protocol: the trainer warns that its state restarts."""

    def __init__(self):
        super().__init__()
        self.batches_seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches_seen += 1


def build_model(s: Settings) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.1), keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def build_data(s: Settings):
    x, y = _examples(EXAMPLES, 0)
    steps = EXAMPLES // BATCH

    def batches(epoch: int, start_step: int, seed: int):
        order = np.random.default_rng([seed, epoch]).permutation(EXAMPLES)
        for step in range(start_step, steps):
            while s.gate and _allowed(s.gate) <= epoch * steps + step:
                time.sleep(0.005)
            idx = order[step * BATCH:(step + 1) * BATCH]
            yield x[idx], y[idx]

    vx, vy = _examples(128, 1)
    return trainer.EpochBatches(batches, steps), trainer.ArrayData(vx, vy, batch_size=64, shuffle=False)


def callbacks(s: Settings):
    cbs = [keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5, patience=s.lr_patience,
                                             cooldown=s.lr_cooldown, min_delta=NEVER),
           keras.callbacks.EarlyStopping(monitor="loss", patience=s.stop_patience, min_delta=NEVER,
                                         restore_best_weights=True)]
    if not s.out:
        return cbs
    out = s.out
    os.makedirs(out, exist_ok=True)
    return cbs + [
        keras.callbacks.ModelCheckpoint(os.path.join(out, "best.weights.h5"), monitor="val_loss",
                                        save_best_only=True, save_weights_only=True),
        keras.callbacks.ModelCheckpoint(os.path.join(out, "every7", "e{epoch}-b{batch}.weights.h5"),
                                        save_freq=7, save_weights_only=True),
        keras.callbacks.CSVLogger(os.path.join(out, "log.csv")),
        keras.callbacks.TensorBoard(os.path.join(out, "tb"), update_freq="batch", write_graph=False),
        LossTally(os.path.join(out, "tally.txt")),
        Unkept(),
    ]
