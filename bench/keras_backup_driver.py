"""The alternative users have today: one model.fit with keras.callbacks.BackupAndRestore.

Run by bench/preemption.py; the reference job's model and data for the same preset. Appends
one line per executed batch to <backup>/steps.log so the bench can count work.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer.job import load  # noqa: E402


class StepLog(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.fh = open(path, "a", buffering=1)

    def on_train_batch_end(self, batch, logs=None):
        self.fh.write("1\n")


def main(backup_dir: str, preset: str, train_size: int, epochs: int, save_freq: int) -> None:
    """The reference job's model and (unaugmented) data, trained by one model.fit."""
    job = load(None)
    settings, _ = job.choose(preset, {"train_size": train_size, "augment": False})
    keras.utils.set_random_seed(42)
    tf.config.experimental.enable_op_determinism()
    train, _ = job.build_data(settings)
    x, y = train.structure
    x, y = train.prepare(tf.constant(x), tf.constant(y))
    model = job.build_model(settings)
    os.makedirs(backup_dir, exist_ok=True)
    print("Epoch start", flush=True)
    model.fit(x.numpy(), y.numpy(), batch_size=settings.batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(os.path.join(backup_dir, "backup"), save_freq=save_freq),
                         StepLog(os.path.join(backup_dir, "steps.log"))])
    np.savez(os.path.join(backup_dir, "final.npz"), *[v.numpy() for v in model.weights])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
