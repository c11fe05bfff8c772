"""A TFRecord pipeline as users write it, without ``assert_cardinality``: shards in a new order
each epoch, interleaved, a reshuffling shuffle buffer, a parallel parse, batched, prefetched.
TensorFlow cannot tell its length (``cardinality()`` is -2), so the first epoch ends where the
data ends, as in ``model.fit``. ``write_records`` writes the shards (``--files``) once.
``term_at_step`` sends SIGTERM to this process as that global step begins (see ``vae_job``)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from trainer import setting

SHARDS, PER_SHARD, FEATURES, CLASSES = 6, 25, 5, 3


@dataclass
class Settings:
    files: str = setting("", may_change=True, help="folder written by write_records")
    batch_size: int = 16
    steps_per_execution: int = 1
    term_at_step: int | None = setting(None, may_change=True, help="SIGTERM this process during this global step")


def write_records(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for shard in range(SHARDS):
        with tf.io.TFRecordWriter(str(folder / f"part-{shard}.tfrecord")) as writer:
            for _ in range(PER_SHARD):
                x = rng.normal(size=FEATURES).astype(np.float32)
                y = int(np.digitize(x[0] + 0.5 * x[1], [-0.5, 0.5]))
                features = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x)),
                            "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[y]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=features)).SerializeToString())


def _parse(record):
    parsed = tf.io.parse_single_example(record, {"x": tf.io.FixedLenFeature([FEATURES], tf.float32),
                                                 "y": tf.io.FixedLenFeature([], tf.int64)})
    return parsed["x"], tf.cast(parsed["y"], tf.int32)


def build_data(s: Settings) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(training, validation), both of unknown length."""
    paths = sorted(str(p) for p in Path(s.files).glob("*.tfrecord"))
    examples = tf.data.Dataset.from_tensor_slices(paths).shuffle(SHARDS).interleave(tf.data.TFRecordDataset,
                                                                                      cycle_length=2)
    train = examples.shuffle(64).map(_parse, num_parallel_calls=2).batch(s.batch_size).prefetch(2)
    return train, tf.data.TFRecordDataset(paths[:2]).map(_parse).batch(7)


def build_model(s: Settings) -> keras.Model:
    model = keras.Sequential([keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(CLASSES, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"], steps_per_execution=s.steps_per_execution)
    return model


def callbacks(s: Settings):
    from tests.vae_job import TermAtStep
    return [TermAtStep(s.term_at_step)] if s.term_at_step else []
