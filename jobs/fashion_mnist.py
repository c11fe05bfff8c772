"""The reference job: Fashion-MNIST, the default when no --job is given.

Presets (``--preset``; every setting below is also a flag, e.g. ``--stages 3,3,3``):

* ``small`` (default): a small CNN with Dropout, Adam, all 60,000 training
  images; about 91% validation accuracy on the 10,000 test images in a few
  minutes on a 2-core CPU.
* ``reference``: the ResNet of the classic start/stop/resume tutorial and its
  recipe: pre-activation bottleneck blocks, 3 stages of 9, filters
  64/64/128/256, 32x32 input, L2 1e-4, plain SGD at 1e-1 (no momentum),
  batch 128 with the last partial batch dropped (468 steps per epoch),
  width/height shift 0.1 and horizontal flips.
* ``tiny``: seconds per epoch, for tests.

It is also the template for your own job: ``Settings``, ``PRESETS``,
``build_model`` and ``build_data`` are all a job needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import keras
import tensorflow as tf
from fashion_mnist_idx import load
from keras import layers, regularizers

import trainer
from trainer import setting

NUM_CLASSES = 10
BN_EPSILON = 2e-5
BN_MOMENTUM = 0.9
SHIFT_FRACTION = 0.1  # the tutorial's width/height_shift_range


@dataclass
class Settings:
    model: Literal["resnet", "cnn"] = setting("resnet", help="the tutorial's ResNet, or a small CNN")
    stages: tuple[int, ...] = setting((9, 9, 9), help="ResNet: residual blocks per stage")
    filters: tuple[int, ...] = setting((64, 64, 128, 256), help="ResNet: stem + per-stage filters; "
                                       "CNN: filters of its two conv blocks")
    image_size: int = setting(32, help="images are resized to this (28: no resize)")
    weight_decay: float = setting(1e-4, help="L2 factor")
    dropout: float = setting(0.0, help="CNN: dropout before the classifier")
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = setting(0.1, may_change=True,
                        help="initial learning rate (change a run's with `python -m trainer lr`)")
    momentum: float = setting(0.0, help="SGD momentum")
    batch_size: int = 128
    steps_per_execution: int = setting(1, may_change=True, help="steps per tf.function call (compile's)")
    drop_remainder: bool = setting(True, help="drop the last partial batch of an epoch")
    augment: bool = setting(True, help="random shifts and horizontal flips")
    train_size: int | None = setting(None, help="training images (none: all 60000)")
    val_size: int | None = setting(None, help="validation images from the test set (none: all 10000)")
    data_dir: str | None = setting(None, may_change=True, help="folder with the four IDX files")

    def __post_init__(self):
        if self.model == "resnet" and len(self.filters) != len(self.stages) + 1:
            raise ValueError(f"--filters needs {len(self.stages) + 1} values for {len(self.stages)} stages "
                             f"(stem + one per stage), got {self.filters}")
        if self.model == "cnn" and len(self.filters) != 2:
            raise ValueError(f"--filters needs 2 values for the CNN, got {self.filters}")
        if self.image_size < 8:
            raise ValueError(f"--image-size must be >= 8, got {self.image_size}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"--dropout must be in [0, 1), got {self.dropout}")
        for name in ("train_size", "val_size"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be >= 1 or none, got {value}")
        if self.train_size is not None and self.train_size < self.batch_size:
            raise ValueError(f"--train-size {self.train_size} is smaller than one batch ({self.batch_size}); "
                             "lower --batch-size")


PRESETS = {
    "small": dict(model="cnn", filters=(32, 64), image_size=28, dropout=0.3, optimizer="adam", lr=1e-3,
                  augment=False, weight_decay=0.0, drop_remainder=False, epochs=5),
    "reference": dict(epochs=80),
    "tiny": dict(stages=(1,), filters=(4, 8), image_size=16, lr=0.05, momentum=0.9, batch_size=32,
                 train_size=512, val_size=128, drop_remainder=False, epochs=3),
}
DEFAULT_PRESET = "small"


def build_model(s: Settings) -> keras.Model:
    model = _resnet(s) if s.model == "resnet" else _cnn(s)
    optimizer = (keras.optimizers.SGD(learning_rate=s.lr, momentum=s.momentum) if s.optimizer == "sgd"
                 else keras.optimizers.Adam(learning_rate=s.lr))
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  steps_per_execution=s.steps_per_execution)
    return model


def build_data(s: Settings):
    data = load(s.data_dir)
    train = trainer.ArrayData(data.x_train[: s.train_size], data.y_train[: s.train_size],
                              batch_size=s.batch_size, prepare=_prepare(s.image_size),
                              augment=_augment if s.augment else None, drop_remainder=s.drop_remainder)
    return train, (data.x_test[: s.val_size], data.y_test[: s.val_size])


def _prepare(image_size: int):
    def prepare(images, labels):
        """uint8 (B, 28, 28) -> float32 (B, S, S, 1) in [0, 1]; labels as int32."""
        x = tf.cast(images, tf.float32)[..., None] / 255.0
        if image_size != 28:
            x = tf.image.resize(x, (image_size, image_size), method="bilinear")
        return x, tf.cast(labels, tf.int32)
    return prepare


def _augment(x, y, rand: trainer.ExampleRandom):
    """The tutorial's augmentation: shift by up to 10% (edge pixels repeat), flip half horizontally.

    Index arithmetic with gathers, so a batch needs no per-example loop."""
    size = x.shape[1]
    max_shift = int(round(SHIFT_FRACTION * size))
    shift = rand.integers(-max_shift, max_shift + 1, shape=(2,))
    flip = rand.bernoulli(0.5)
    grid = tf.range(size)[None, :]
    rows = tf.clip_by_value(grid - shift[:, 1:2], 0, size - 1)
    cols = tf.clip_by_value(grid - shift[:, 0:1], 0, size - 1)
    cols = tf.where(flip[:, None], size - 1 - cols, cols)
    x = tf.gather(x, rows, axis=1, batch_dims=1)
    return tf.gather(x, cols, axis=2, batch_dims=1), y


def _cnn(s: Settings) -> keras.Model:
    reg = regularizers.l2(s.weight_decay) if s.weight_decay else None
    inputs = keras.Input((s.image_size, s.image_size, 1))
    x = inputs
    for filters in s.filters:
        x = layers.Conv2D(filters, 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
        x = layers.Activation("relu")(layers.BatchNormalization()(x))
        x = layers.MaxPooling2D()(x)
    x = layers.Flatten()(x)
    x = layers.Dropout(s.dropout)(x)
    x = layers.Dense(128, activation="relu", kernel_regularizer=reg)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax")(x)
    return keras.Model(inputs, outputs, name="cnn")


def _residual(x, filters: int, stride: int, reduce: bool, reg):
    """BN-ReLU-conv1x1 (K/4) -> BN-ReLU-conv3x3 (K/4) -> BN-ReLU-conv1x1 (K), plus shortcut."""
    shortcut = x
    bottleneck = max(1, filters // 4)
    act1 = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(x))
    y = layers.Conv2D(bottleneck, 1, use_bias=False, kernel_regularizer=reg)(act1)
    y = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(y))
    y = layers.Conv2D(bottleneck, 3, strides=stride, padding="same", use_bias=False, kernel_regularizer=reg)(y)
    y = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(y))
    y = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=reg)(y)
    if reduce:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(act1)
    return layers.add([y, shortcut])


def _resnet(s: Settings) -> keras.Model:
    """``stages[i]`` residual blocks of ``filters[i + 1]`` channels; ``filters[0]`` is the stem."""
    reg = regularizers.l2(s.weight_decay) if s.weight_decay else None
    inputs = keras.Input((s.image_size, s.image_size, 1))
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(inputs)
    x = layers.Conv2D(s.filters[0], 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    for i, blocks in enumerate(s.stages):
        stride = 1 if i == 0 else 2
        x = _residual(x, s.filters[i + 1], stride, reduce=True, reg=reg)
        for _ in range(blocks - 1):
            x = _residual(x, s.filters[i + 1], 1, reduce=False, reg=reg)
    x = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(x))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="resnet")
