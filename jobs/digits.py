"""A second job: an MLP with Dropout on scikit-learn's handwritten digits (8x8 images,
1,797 of them, shipped inside the scikit-learn package: no download).

    python -m trainer train --job jobs/digits.py --run-dir runs/digits
    python -m trainer train --job jobs/digits.py --run-dir runs/digits-wide --hidden 256 --dropout 0.4

Its augmentation adds per-pixel noise drawn with ``trainer.ExampleRandom``,
and Dropout draws its masks from a seed state that every checkpoint holds:
both are part of what a resumed run reproduces bitwise.
"""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np

import trainer
from trainer import setting

EPOCHS = 30


@dataclass
class Settings:
    hidden: int = setting(128, help="units of each hidden layer")
    layers: int = setting(2, help="hidden layers")
    dropout: float = setting(0.3, help="dropout after each hidden layer")
    noise: float = setting(0.05, help="std of the Gaussian pixel noise added to training images (0: none)")
    lr: float = setting(1e-3, may_change=True, help="Adam's initial learning rate")
    batch_size: int = 32
    steps_per_execution: int = setting(1, may_change=True, help="steps per tf.function call (compile's)")
    validation_images: int = setting(297, help="images held out for validation (the last ones)")

    def __post_init__(self):
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        if not 0 < self.validation_images < 1000:
            raise ValueError(f"--validation-images must be in 1..999, got {self.validation_images}")


def build_model(s: Settings) -> keras.Model:
    inputs = keras.Input((64,))
    x = inputs
    for _ in range(s.layers):
        x = keras.layers.Dense(s.hidden, activation="relu")(x)
        x = keras.layers.Dropout(s.dropout)(x)
    outputs = keras.layers.Dense(10, activation="softmax")(x)
    model = keras.Model(inputs, outputs, name="digits_mlp")
    model.compile(optimizer=keras.optimizers.Adam(s.lr), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=s.steps_per_execution)
    return model


def build_data(s: Settings):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # pixel values 0..16
    y = digits.target.astype(np.int32)
    cut = len(x) - s.validation_images

    def add_noise(x, y, rand: trainer.ExampleRandom):
        return x + rand.normal(shape=(64,), stddev=s.noise), y

    train = trainer.ArrayData(x[:cut], y[:cut], batch_size=s.batch_size, augment=add_noise if s.noise else None)
    return train, (x[cut:], y[cut:])
