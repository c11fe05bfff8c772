"""A plain tf.data.Dataset that TensorFlow cannot checkpoint (batches from a Python
generator): the trainer warns at start and resumes by skipping. The batches are the
same in every iteration, so skipping is exact and the weights end bitwise equal."""
from __future__ import annotations

from dataclasses import dataclass

import keras
import numpy as np
import tensorflow as tf

EXAMPLES, BATCH, FEATURES, CLASSES = 512, 32, 8, 4


@dataclass
class Settings:
    hidden: int = 16


def build_model(s: Settings) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(s.hidden, activation="relu"),
                              keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def build_data(s: Settings):
    x = np.random.default_rng(0).normal(size=(EXAMPLES, FEATURES)).astype(np.float32)
    y = np.argmax(x @ np.random.default_rng(1).normal(size=(FEATURES, CLASSES)), axis=1).astype(np.int32)

    def batches():
        for start in range(0, EXAMPLES, BATCH):
            yield x[start:start + BATCH], y[start:start + BATCH]
    spec = (tf.TensorSpec((None, FEATURES), tf.float32), tf.TensorSpec((None,), tf.int32))
    dataset = tf.data.Dataset.from_generator(batches, output_signature=spec)
    return dataset.apply(tf.data.experimental.assert_cardinality(EXAMPLES // BATCH))
