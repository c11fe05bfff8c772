"""The pre-activation bottleneck ResNet of the start/stop/resume tutorial."""
from __future__ import annotations

from dataclasses import dataclass

import keras
import tensorflow as tf
from keras import layers, regularizers

BN_EPSILON = 2e-5
BN_MOMENTUM = 0.9
NUM_CLASSES = 10


def _residual(x, filters: int, stride: int, reduce: bool, reg):
    """BN-ReLU-conv1x1 (K/4) -> BN-ReLU-conv3x3 (K/4) -> BN-ReLU-conv1x1 (K), plus shortcut."""
    shortcut = x
    bottleneck = max(1, filters // 4)
    act1 = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(x))
    y = layers.Conv2D(bottleneck, 1, use_bias=False, kernel_regularizer=reg)(act1)
    y = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(y))
    y = layers.Conv2D(bottleneck, 3, strides=stride, padding="same", use_bias=False,
                      kernel_regularizer=reg)(y)
    y = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(y))
    y = layers.Conv2D(filters, 1, use_bias=False, kernel_regularizer=reg)(y)
    if reduce:
        shortcut = layers.Conv2D(filters, 1, strides=stride, use_bias=False, kernel_regularizer=reg)(act1)
    return layers.add([y, shortcut])


def build_resnet(image_size: int, stages, filters, weight_decay: float) -> keras.Model:
    """``stages[i]`` residual blocks of ``filters[i + 1]`` channels; ``filters[0]`` is the stem."""
    reg = regularizers.l2(weight_decay) if weight_decay else None
    inputs = keras.Input((image_size, image_size, 1))
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(inputs)
    x = layers.Conv2D(filters[0], 3, padding="same", use_bias=False, kernel_regularizer=reg)(x)
    for i, blocks in enumerate(stages):
        stride = 1 if i == 0 else 2
        x = _residual(x, filters[i + 1], stride, reduce=True, reg=reg)
        for _ in range(blocks - 1):
            x = _residual(x, filters[i + 1], 1, reduce=False, reg=reg)
    x = layers.Activation("relu")(layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM)(x))
    x = layers.GlobalAveragePooling2D()(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", kernel_regularizer=reg)(x)
    return keras.Model(inputs, outputs, name="resnet")


def compile_model(model: keras.Model, lr: float, momentum: float) -> None:
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=lr, momentum=momentum),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                  jit_compile=False)


@dataclass
class TrainingModel:
    """A compiled model and the variables a checkpoint holds, grouped by owner."""
    model: keras.Model
    state: tf.Variable  # the trainer's JSON state, checkpointed with the weights
    groups: dict


def build_for_training(cfg) -> TrainingModel:
    """Build and compile ``cfg``'s model with its optimizer slots and metric variables
    created now: Keras creates them lazily at the first step, too late to restore into."""
    model = build_resnet(cfg.image_size, cfg.stages, cfg.filters, cfg.weight_decay)
    compile_model(model, cfg.lr, cfg.momentum)
    sample = (tf.zeros((cfg.batch_size, cfg.image_size, cfg.image_size, 1)),
              tf.zeros((cfg.batch_size,), tf.int32))
    model._symbolic_build(data_batch=sample)  # noqa: SLF001 - Keras has no public way to do this
    model.optimizer.build(model.trainable_variables)
    state = tf.Variable("", dtype=tf.string, trainable=False)
    groups = {"model": {v.path: v for v in model.variables},
              "optimizer": {v.path: v for v in model.optimizer.variables},
              "trainer": {"state": state}}
    return TrainingModel(model, state, groups)
