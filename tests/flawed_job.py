"""A small job with one flaw that breaks exact resume, chosen by ``--flaw``, for ``trainer verify``.

``unseeded-data``: build_data adds noise from an unseeded generator, so every
process trains on other data (two uninterrupted runs already differ).
``stateful-callback``: a callback decays the learning rate by the batches it
has counted in an attribute, which restarts at 0 at each resume.
``none``: no flaw (the job resumes exactly).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

import trainer

EPOCHS = 2
FEATURES, CLASSES, EXAMPLES = 8, 4, 512


@dataclass
class Settings:
    flaw: Literal["none", "unseeded-data", "stateful-callback"] = "none"


def build_model(s: Settings) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def build_data(s: Settings):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + 2 * (x[:, 1] > 0).astype(np.int32)
    if s.flaw == "unseeded-data":
        x = x + np.random.default_rng().normal(scale=0.1, size=x.shape).astype(np.float32)
    return trainer.ArrayData(x, y, batch_size=16)


class DecayByOwnCount(keras.callbacks.Callback):
    """lr = 0.1 / (1 + batches / 10), counting batches in an attribute (lost at a resume)."""

    def __init__(self):
        super().__init__()
        self.batches = 0

    def on_train_batch_begin(self, batch, logs=None):
        self.batches += 1
        self.model.optimizer.learning_rate.assign(0.1 / (1 + self.batches / 10))


def callbacks(s: Settings):
    return [DecayByOwnCount()] if s.flaw == "stateful-callback" else []
