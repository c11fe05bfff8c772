"""A job that writes down which examples every replica trained on at every global step.

Each example's first feature is its id; the model's own ``train_step`` appends one line
``global_step replica id,id,...`` to ``--ledger FILE`` per replica and step (through
``tf.py_function``, so it runs inside the compiled step). Used to check that a run keeps
its global order of examples, exactly once, when the replica count changes between
resumes, and that each global batch is split as documented. ``--source epoch_batches``
gives the same examples in the same order through ``EpochBatches`` and a Python generator;
``--source stream`` a plain tf.data pipeline with a reshuffling shuffle buffer (another
order, resumed from its checkpointed iterator).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import keras
import numpy as np
import tensorflow as tf

import trainer
from trainer import setting

EPOCHS = 3
EXAMPLES, FEATURES, CLASSES = 256, 6, 3


@dataclass
class Settings:
    batch_size: int = 16
    source: Literal["arrays", "epoch_batches", "stream"] = "arrays"
    ledger: str = setting("ledger.txt", may_change=True, help="file the train step appends to")


class LedgerModel(keras.Model):
    def __init__(self, ledger: str):
        super().__init__(name="ledger_mlp")
        self.ledger = ledger
        self.hidden = keras.layers.Dense(16, activation="relu")
        self.head = keras.layers.Dense(CLASSES, activation="softmax")

    def call(self, x, training=False):
        return self.head(self.hidden(x[:, 1:]))

    def _record(self, step, replica, ids):
        with open(self.ledger, "a") as fh:
            fh.write(f"{int(step)} {int(replica)} {','.join(str(int(i)) for i in ids.numpy())}\n")

    def train_step(self, data):
        x, _ = data
        replica = tf.distribute.get_replica_context().replica_id_in_sync_group
        tf.py_function(self._record, [self.optimizer.iterations, replica, tf.cast(x[:, 0], tf.int64)], [])
        return super().train_step(data)


def build_model(s: Settings) -> keras.Model:
    model = LedgerModel(s.ledger)
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss="sparse_categorical_crossentropy")
    return model


def build_data(s: Settings):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    x[:, 0] = np.arange(EXAMPLES)
    y = rng.integers(0, CLASSES, EXAMPLES)
    if s.source == "stream":  # unseeded, as users write it: the run's seed fixes the order
        return tf.data.Dataset.from_tensor_slices((x, y)).shuffle(EXAMPLES // 2).batch(s.batch_size)
    arrays = trainer.ArrayData(x, y, batch_size=s.batch_size)
    if s.source == "arrays":
        return arrays

    def batches(epoch, start_step, seed):  # the same order as ArrayData's, from a Python generator
        order = arrays.order(seed, epoch)
        for step in range(start_step, arrays.steps_per_epoch):
            rows = order[step * s.batch_size:(step + 1) * s.batch_size]
            yield x[rows], y[rows]
    return trainer.EpochBatches(batches, arrays.steps_per_epoch)


def read(path) -> dict[int, dict[int, list[int]]]:
    """{global step: {replica: ids}} of a ledger file; a repeated (step, replica) is an error."""
    steps: dict[int, dict[int, list[int]]] = {}
    for line in Path(path).read_text().splitlines():
        step, replica, ids = line.split()
        shares = steps.setdefault(int(step), {})
        assert int(replica) not in shares, f"step {step} replica {replica} trained twice"
        shares[int(replica)] = [int(i) for i in ids.split(",")]
    return steps
