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
    source: Literal["arrays", "epoch_batches", "stream", "files", "pipelines"] = "arrays"
    ledger: str = setting("ledger.txt", may_change=True, help="file the train step appends to")
    files: str = setting("", may_change=True, help="files: folder of TFRecord files written by write_files")
    count_decodes: bool = setting(False, may_change=True, help="files: count the records each process "
                                  "decodes (a Python counter: the pipeline is no longer checkpointable)")
    unknown_length: bool = setting(False, help="files: leave the pipeline's length unknown, as a plain TFRecord "
                                   "pipeline has it (no assert_cardinality)")


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
    if s.source == "files":
        return _files_pipeline(s)
    if s.source == "pipelines":
        return _per_pipeline(s)
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


# -- TFRecord files: a streamed pipeline that starts from a list of files -------------------------
FEATURE_SPEC = {"x": tf.io.FixedLenFeature([FEATURES], tf.float32), "y": tf.io.FixedLenFeature([], tf.int64)}
DECODED: list[int] = [0]  # records this process decoded (with --count-decodes)


def write_files(folder, sizes: list[int]) -> int:
    """TFRecord files of ``sizes`` records each, ids 0.. in file order; the number of records."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    next_id = 0
    for number, size in enumerate(sizes):
        with tf.io.TFRecordWriter(str(folder / f"part-{number:03d}.tfrecord")) as writer:
            for _ in range(size):
                x = rng.normal(size=FEATURES).astype("float32")
                x[0] = next_id
                feature = {"x": tf.train.Feature(float_list=tf.train.FloatList(value=x)),
                           "y": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(rng.integers(CLASSES))]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
                next_id += 1
    return next_id


def _files_pipeline(s: Settings, context: tf.distribute.InputContext | None = None) -> tf.data.Dataset:
    """Files in a new order each pass, interleaved, a reshuffling shuffle buffer, a parallel
    parse, batches: the shape of a TFRecord pipeline as users write it, with a known length.
    With ``context``, one input pipeline of several, as distribute_datasets_from_function makes them."""
    paths = sorted(str(p) for p in Path(s.files).glob("part-*.tfrecord"))
    total = sum(1 for _ in tf.data.TFRecordDataset(paths))
    files = tf.data.Dataset.from_tensor_slices(paths)
    batch = s.batch_size
    if context is not None:
        files = files.shard(context.num_input_pipelines, context.input_pipeline_id)
        batch = context.get_per_replica_batch_size(s.batch_size)
    records = files.shuffle(len(paths)).interleave(tf.data.TFRecordDataset, cycle_length=2).shuffle(64)
    if s.count_decodes:
        records = counting_decodes(records)
    examples = records.map(lambda r: _parse(r), num_parallel_calls=2, deterministic=True)
    batches = examples.batch(batch).prefetch(2)
    if s.unknown_length:
        return batches
    return batches.apply(tf.data.experimental.assert_cardinality(-(-total // s.batch_size)))


def _per_pipeline(s: Settings):
    return lambda context: _files_pipeline(s, context)


def _counted(record):
    DECODED[0] += 1
    return record


def _parse(record):
    parsed = tf.io.parse_single_example(tf.ensure_shape(record, []), FEATURE_SPEC)
    return parsed["x"], parsed["y"]


def counting_decodes(records: tf.data.Dataset) -> tf.data.Dataset:
    """``records``, each counted in DECODED as it passes (a Python counter: no longer checkpointable)."""
    return records.map(lambda r: tf.py_function(_counted, [r], tf.string))


class DecodeCount(keras.callbacks.Callback):
    """Writes the records this process decoded to ``<prefix>-<TF_CONFIG task index>`` at train end."""

    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def on_train_end(self, logs=None):
        import json
        import os
        task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {}).get("index", 0)
        Path(f"{self.prefix}-{task}").write_text(str(DECODED[0]))


def callbacks(s: Settings):
    return [DecodeCount(f"{s.ledger}.decoded")] if s.count_decodes else []
