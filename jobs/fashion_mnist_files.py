"""Fashion-MNIST read from files: the pattern of data sets that outgrow memory.

Prepare the files once (from the IDX files that jobs/fashion_mnist.py finds)::

    python jobs/fashion_mnist_files.py prepare --out data/fmnist-files [--shards 16] [--train-size N] [--test-size N]

It writes, for each split, TFRecord shards (``train-00000-of-00016.tfrecord``,
one ``tf.train.Example`` per image: raw pixels and label) and the same images as
fixed-size records (``train-00000-of-00016.bin``, 784 bytes each) with their
labels (``train-labels.npy``). Then train with one of two readers::

    python -m trainer train --job jobs/fashion_mnist_files.py --files data/fmnist-files --run-dir runs/files

* ``--reader stream`` (default): a streaming ``tf.data`` pipeline, TFRecord
  shards -> interleave -> shuffle buffer -> parallel parse and decode ->
  batch. The trainer saves its iterator's state with every checkpoint and
  resumes from it, reading nothing twice. With several workers each reads only
  its logical shards of the files (``--data-shards``; by default one per file,
  so 16 here: a run may then resume on 1, 2, 4, 8 or 16 workers).
* ``--reader records``: index-addressable: ``trainer.ArrayData`` over the
  records (each one read by its offset) with a ``prepare`` that decodes; each
  epoch is a full permutation drawn from ``(seed, epoch)``.
"""
from __future__ import annotations

import argparse
import bisect
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import fashion_mnist
import keras
import numpy as np
import tensorflow as tf
from fashion_mnist_idx import load

import trainer
from trainer import DataError, setting

PIXELS = 28 * 28
SPLITS = ("train", "test")
FEATURES = {"image": tf.io.FixedLenFeature([], tf.string), "label": tf.io.FixedLenFeature([], tf.int64)}


@dataclass
class Settings:
    files: str = setting("data/fmnist-files", may_change=True,
                         help="folder written by `python jobs/fashion_mnist_files.py prepare`")
    reader: Literal["stream", "records"] = setting("stream", help="streaming tf.data pipeline over the "
                                                   "TFRecord shards, or ArrayData over the records")
    shuffle_buffer: int = setting(10_000, help="stream: examples in the shuffle buffer")
    cycle_length: int = setting(4, help="stream: shards read at once (interleave)")
    batch_size: int = 128
    filters: tuple[int, ...] = setting((32, 64), help="filters of the CNN's two conv blocks")
    dropout: float = 0.3
    lr: float = setting(1e-3, may_change=True, help="Adam's initial learning rate")
    val_size: int | None = setting(None, help="validation images (none: the whole test split)")

    def __post_init__(self):
        for name in ("shuffle_buffer", "cycle_length", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")


PRESETS = {
    "small": dict(epochs=5),
    "tiny": dict(filters=(4, 8), batch_size=32, shuffle_buffer=256, val_size=128, epochs=3),
}
DEFAULT_PRESET = "small"


def build_model(s: Settings) -> keras.Model:
    return fashion_mnist.build_model(fashion_mnist.Settings(
        model="cnn", filters=s.filters, image_size=28, dropout=s.dropout, optimizer="adam", lr=s.lr,
        weight_decay=0.0))


def build_data(s: Settings):
    folder = _prepared(Path(s.files))
    train = _stream(folder, s) if s.reader == "stream" else _records(folder, "train", s.batch_size)
    return train, _records(folder, "test", s.batch_size, shuffle=False, limit=s.val_size)


# -- reading ------------------------------------------------------------------
def _stream(folder: Path, s: Settings) -> tf.data.Dataset:
    """Shards in a new order each epoch, ``cycle_length`` read in turn, examples mixed in a
    shuffle buffer, decoded in parallel, batched: a plain tf.data.Dataset of known length."""
    shards = sorted(str(p) for p in folder.glob("train-*.tfrecord"))
    count = len(np.load(folder / "train-labels.npy", mmap_mode="r"))
    files = tf.data.Dataset.from_tensor_slices(shards).shuffle(len(shards))
    # a sequential interleave: TensorFlow cannot restore a parallel one (the parallel map decodes)
    examples = files.interleave(tf.data.TFRecordDataset, cycle_length=min(s.cycle_length, len(shards)))
    examples = examples.shuffle(s.shuffle_buffer).map(_decode_example, num_parallel_calls=2,
                                                      deterministic=True)
    batches = examples.batch(s.batch_size).prefetch(2)
    return batches.apply(tf.data.experimental.assert_cardinality(-(-count // s.batch_size)))


def _decode_example(record):
    parsed = tf.io.parse_single_example(record, FEATURES)
    pixels = tf.reshape(tf.io.decode_raw(parsed["image"], tf.uint8), (28, 28))
    return tf.cast(pixels, tf.float32)[..., None] / 255.0, tf.cast(parsed["label"], tf.int32)


def _decode_batch(pixels, labels):
    """uint8 (B, 784) records -> float32 (B, 28, 28, 1) in [0, 1]; labels as int32."""
    images = tf.reshape(tf.cast(pixels, tf.float32), (-1, 28, 28, 1)) / 255.0
    return images, tf.cast(labels, tf.int32)


class Records:
    """Fixed-size records in shard files, addressed by index: ``records[i]`` reads record i
    at its offset and nothing else, so any permutation costs one read per example."""

    def __init__(self, shards: list[Path], record_bytes: int, limit: int | None = None):
        self.shards, self.record_bytes = [str(p) for p in shards], record_bytes
        counts = [os.path.getsize(p) // record_bytes for p in self.shards]
        self.starts = list(np.cumsum([0, *counts]))
        self.length = int(self.starts[-1]) if limit is None else min(limit, int(self.starts[-1]))
        self._fds: dict[int, int] = {}

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> np.ndarray:
        shard = bisect.bisect_right(self.starts, index) - 1
        fd = self._fds.get(shard)
        if fd is None:
            fd = self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
        offset = (index - self.starts[shard]) * self.record_bytes
        return np.frombuffer(os.pread(fd, self.record_bytes, offset), np.uint8)


def _records(folder: Path, split: str, batch_size: int, shuffle: bool = True,
             limit: int | None = None) -> trainer.ArrayData:
    records = Records(sorted(folder.glob(f"{split}-*.bin")), PIXELS, limit)
    labels = np.load(folder / f"{split}-labels.npy")[:limit]
    if len(records) != len(labels):
        raise DataError(f"{folder}: {len(records)} {split} records but {len(labels)} labels; "
                        "prepare the folder again")
    return trainer.ArrayData(records, labels, batch_size=batch_size, prepare=_decode_batch, shuffle=shuffle)


def _prepared(folder: Path) -> Path:
    missing = [f"{split}-labels.npy" for split in SPLITS if not (folder / f"{split}-labels.npy").exists()]
    if missing:
        raise DataError(f"{folder} has no prepared Fashion-MNIST files ({', '.join(missing)} missing); "
                        f"write them once with: python jobs/fashion_mnist_files.py prepare --out {folder}")
    return folder


# -- the preparation step ---------------------------------------------------
def prepare(out: Path, shards: int, train_size: int | None = None, test_size: int | None = None,
            data_dir: str | None = None) -> None:
    """Write both splits as TFRecord shards and as fixed-size records, labels last (their
    presence marks a finished split)."""
    data = load(data_dir)
    out.mkdir(parents=True, exist_ok=True)
    splits = {"train": (data.x_train[:train_size], data.y_train[:train_size]),
              "test": (data.x_test[:test_size], data.y_test[:test_size])}
    for split, (images, labels) in splits.items():
        parts = np.array_split(np.arange(len(labels)), shards)
        for number, part in enumerate(parts):
            stem = out / f"{split}-{number:05d}-of-{shards:05d}"
            _write_tfrecord(stem.with_suffix(".tfrecord"), images[part], labels[part])
            stem.with_suffix(".bin").write_bytes(images[part].reshape(len(part), PIXELS).tobytes())
        np.save(out / f"{split}-labels.npy", labels.astype(np.int64))
        print(f"{split}: {len(labels)} images in {shards} shards in {out}")


def _write_tfrecord(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    with tf.io.TFRecordWriter(str(path)) as writer:
        for image, label in zip(images, labels):
            feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image.tobytes()])),
                       "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[int(label)]))}
            writer.write(tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Write Fashion-MNIST as files for jobs/fashion_mnist_files.py")
    commands = parser.add_subparsers(dest="command", required=True)
    prep = commands.add_parser("prepare", help="write the TFRecord shards and records")
    prep.add_argument("--out", type=Path, required=True, help="folder to write")
    prep.add_argument("--shards", type=int, default=16, help="files per split")
    prep.add_argument("--train-size", type=int, default=None, help="first N training images (default all)")
    prep.add_argument("--test-size", type=int, default=None, help="first N test images (default all)")
    prep.add_argument("--data-dir", default=None, help="folder with the IDX files (as jobs/fashion_mnist.py)")
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error(f"--shards must be >= 1, got {args.shards}")
    try:
        prepare(args.out, args.shards, args.train_size, args.test_size, args.data_dir)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 4
    return 0


if __name__ == "__main__":
    sys.exit(main())
