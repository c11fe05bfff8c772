"""A small job for the precision and compilation options GPU users turn on first:
``--policy mixed_float16`` (a LossScaleOptimizer whose dynamic scale must resume),
``--policy mixed_bfloat16``, and ``--jit`` (``compile(jit_compile=True)``, XLA)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
import numpy as np

import trainer

EPOCHS = 3
FEATURES, CLASSES = 12, 4


@dataclass
class Settings:
    policy: Literal["float32", "mixed_float16", "mixed_bfloat16"] = "float32"
    jit: bool = False


def build_model(s: Settings) -> keras.Model:
    keras.mixed_precision.set_global_policy(s.policy)
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(32, activation="relu"),
                              keras.layers.Dropout(0.2), keras.layers.Dense(CLASSES),
                              keras.layers.Activation("softmax", dtype="float32")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], jit_compile=s.jit)
    return model


def build_data(s: Settings):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(640, FEATURES)).astype("float32")
    y = (x[:, :CLASSES].argmax(1) + (rng.random(640) < 0.1)) % CLASSES
    train = trainer.ArrayData(x[:512], y[:512], batch_size=32)
    return train, (x[512:], y[512:])
