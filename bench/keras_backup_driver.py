"""The alternative users have today: one model.fit with keras.callbacks.BackupAndRestore.

Run by bench/preemption.py; same model and data as the trainer's preset. Appends
one line per executed batch to <backup>/steps.log so the bench can count work.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import data  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.model import build_resnet, compile_model  # noqa: E402


class StepLog(keras.callbacks.Callback):
    def __init__(self, path):
        super().__init__()
        self.fh = open(path, "a", buffering=1)

    def on_train_batch_end(self, batch, logs=None):
        self.fh.write("1\n")


def main(backup_dir: str, preset: str, train_size: int, epochs: int, save_freq: int) -> None:
    cfg = TrainConfig.from_preset("unused", preset, train_size=train_size, epochs=epochs)
    keras.utils.set_random_seed(cfg.seed)
    tf.config.experimental.enable_op_determinism()
    ds = data.load()
    x = tf.image.resize(ds.x_train[:train_size, ..., None].astype(np.float32) / 255.0,
                       (cfg.image_size, cfg.image_size)).numpy()
    y = ds.y_train[:train_size].astype(np.int32)
    model = build_resnet(cfg.image_size, cfg.stages, cfg.filters, cfg.weight_decay)
    compile_model(model, cfg.lr, cfg.momentum)
    os.makedirs(backup_dir, exist_ok=True)
    print("Epoch start", flush=True)
    model.fit(x, y, batch_size=cfg.batch_size, epochs=epochs, shuffle=True, verbose=0,
              callbacks=[keras.callbacks.BackupAndRestore(os.path.join(backup_dir, "backup"), save_freq=save_freq),
                         StepLog(os.path.join(backup_dir, "steps.log"))])
    np.savez(os.path.join(backup_dir, "final.npz"), *[v.numpy() for v in model.weights])


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))
