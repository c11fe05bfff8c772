"""The decode-heavy TFRecord job of ``bench/sharding.py``: PNG images in TFRecord files, decoded
and transformed record by record in a parallel map, for a model small enough that reading the
input is most of a step's work.

Write the files with :func:`write_files`; train with
``python -m trainer train --job bench/sharding_job.py --files DIR ...``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from tests.ledger_job import DecodeCount, counting_decodes
from trainer import setting

CLASSES = 10
FEATURES = {"png": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


@dataclass
class Settings:
    files: str = setting("", may_change=True, help="folder of part-*.tfrecord files written by write_files")
    batch_size: int = 64
    image_size: int = setting(64, help="side of the stored PNG images (as written)")
    crop: int = setting(48, help="side of the image the model sees")
    shuffle_buffer: int = 256
    cycle_length: int = 4
    parallel_calls: int = 2
    autotune: bool = setting(True, help="tf.data's autotuning (options.autotune.enabled) of the pipeline")
    count_decodes: bool = setting(False, may_change=True, help="count the records this process decodes (a "
                                  "Python counter: the pipeline can no longer be checkpointed)")
    decoded_out: str = setting("", may_change=True, help="with --count-decodes: write the count to "
                               "<this>-<TF_CONFIG task index> at train end")


def write_files(folder, files: int, per_file: int, size: int) -> int:
    """``files`` TFRecord files of ``per_file`` PNG images (size x size x 3) each; the number of records."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 200, size, dtype=np.float32)
    for number in range(files):
        with tf.io.TFRecordWriter(str(folder / f"part-{number:03d}.tfrecord")) as writer:
            for _ in range(per_file):
                label = int(rng.integers(CLASSES))
                noise = rng.integers(0, 56, (size, size, 3))
                image = (ramp[:, None, None] * (label + 1) / CLASSES + noise).astype(np.uint8)
                png = tf.io.encode_png(image).numpy()
                feature = {"png": tf.train.Feature(bytes_list=tf.train.BytesList(value=[png])),
                           "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))}
                writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())
    return files * per_file


def build_model(s: Settings) -> keras.Model:
    """A small convolutional model: the step's compute stays well below the input's decoding."""
    model = keras.Sequential([
        keras.Input((s.crop, s.crop, 3)),
        keras.layers.Conv2D(8, 3, strides=2, activation="relu"),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(CLASSES, activation="softmax"),
    ])
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    return model


def build_data(s: Settings):
    return pipeline(s)


def pipeline(s: Settings, known_length: bool = True) -> tf.data.Dataset:
    """Files in a new order each pass, interleaved, a reshuffling shuffle buffer, a parallel decode,
    batches, prefetch; with ``known_length``, its length asserted (as the trainer needs)."""
    paths = sorted(str(p) for p in Path(s.files).glob("part-*.tfrecord"))
    total = sum(1 for _ in tf.data.TFRecordDataset(paths))
    files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths))
    records = files.interleave(tf.data.TFRecordDataset, cycle_length=min(s.cycle_length, len(paths)))
    records = records.shuffle(s.shuffle_buffer)
    if s.count_decodes:
        records = counting_decodes(records)
    examples = records.map(lambda r: decode(r, s.image_size, s.crop), num_parallel_calls=s.parallel_calls,
                           deterministic=True)
    batches = examples.batch(s.batch_size).prefetch(2)
    if not s.autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        batches = batches.with_options(options)
    if not known_length:
        return batches
    return batches.apply(tf.data.experimental.assert_cardinality(-(-total // s.batch_size)))


def decode(record, size: int, crop: int):
    """PNG decode and a few image operations (deterministic ones: the trainer turns op determinism on)."""
    parsed = tf.io.parse_single_example(tf.ensure_shape(record, []), FEATURES)
    image = tf.image.convert_image_dtype(tf.io.decode_png(parsed["png"], channels=3), tf.float32)
    image = tf.ensure_shape(image, (size, size, 3))
    image = tf.image.resize(tf.image.central_crop(image, 0.875), (crop, crop), method="bicubic")
    image = tf.image.adjust_saturation(tf.image.adjust_contrast(image, 1.2), 0.9)
    image = tf.image.adjust_hue(tf.image.flip_left_right(image), 0.05)
    blur = tf.ones((3, 3, 3, 1)) / 9.0
    image = tf.nn.depthwise_conv2d(image[None], blur, [1, 1, 1, 1], "SAME")[0]
    return tf.image.per_image_standardization(image), tf.cast(parsed["label"], tf.int32)


def callbacks(s: Settings):
    return [DecodeCount(s.decoded_out)] if s.count_decodes else []
