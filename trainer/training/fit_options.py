"""The ``model.fit`` arguments that change training, beyond the model and its data.

A job gives them as ``fit_kwargs(settings) -> dict`` (the names and values
``model.fit`` takes); ``trainer.fit`` takes them as keyword arguments. Both
are checked here and applied as ``fit`` applies them: ``class_weight`` turns
into per-example weights of the training batches only (Keras's
``class_weight_to_sample_weights`` rule), ``validation_freq`` picks the epochs
that validate (the loop's ``_should_validate``), ``validation_batch_size``
batches validation arrays (``trainer.data.accepted.validation_from_job``). ``class_weight`` changes the
model, so it is part of the run's identity; ``validation_freq`` is not (it
may change between resumes, like ``--epochs``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import BAD_INPUT, TrainerError

SUPPORTED = ("class_weight", "validation_freq", "validation_batch_size")


class FitOptionError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """A fit argument has the wrong kind or value; the message names it (exit code 2)."""


@dataclass(frozen=True)
class FitOptions:
    class_weight: dict | None = None      # {class id: weight}
    validation_freq: int | tuple = 1      # every N epochs, or these (1-based) epochs
    validation_batch_size: int | None = None  # for validation arrays; fit's default: the training batch size

    def identity(self) -> dict:
        """What changes the model: the class weights, with the keys JSON gives them."""
        weights = self.class_weight
        return {"class_weight": {str(k): weights[k] for k in sorted(weights)} if weights else None}


def from_kwargs(kwargs, where: str) -> FitOptions:
    """Checked options from ``kwargs`` (names as ``model.fit``'s); ``where`` names their source."""
    if kwargs is None:
        return FitOptions()
    if not isinstance(kwargs, dict):
        raise FitOptionError(f"{where} must return a dict of model.fit arguments "
                             f"({', '.join(SUPPORTED)}), got {type(kwargs).__name__}")
    unknown = sorted(set(kwargs) - set(SUPPORTED))
    if unknown:
        raise FitOptionError(f"{where}: {', '.join(unknown)} cannot be given here (supported: "
                             f"{', '.join(SUPPORTED)}; the batch size, shuffling and sample weights belong to "
                             "the data, e.g. trainer.ArrayData(x, y, sample_weight, batch_size=..., shuffle=...))")
    return FitOptions(_class_weight(kwargs.get("class_weight"), where),
                      _validation_freq(kwargs.get("validation_freq", 1), where),
                      _batch_size(kwargs.get("validation_batch_size"), where))


def _class_weight(value, where: str) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise FitOptionError(f"{where}: class_weight must be a non-empty dict {{class id: weight}}, e.g. "
                             f"{{0: 1.0, 1: 5.0}}, got {value!r}")
    weights = {}
    for key, weight in value.items():
        if not isinstance(key, (int, np.integer)) or isinstance(key, bool) or key < 0:
            raise FitOptionError(f"{where}: class_weight's keys must be class ids (integers >= 0), got {key!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float, np.number)) or not math.isfinite(weight):
            raise FitOptionError(f"{where}: class_weight[{key}] must be a finite number, got {weight!r}")
        weights[int(key)] = float(weight)
    return weights


def _validation_freq(value, where: str) -> int | tuple:
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1:
        return int(value)
    if (isinstance(value, (list, tuple)) and value
            and all(isinstance(e, (int, np.integer)) and not isinstance(e, bool) and e >= 1 for e in value)):
        return tuple(int(e) for e in value)
    raise FitOptionError(f"{where}: validation_freq must be a positive integer (validate every N epochs) or a "
                         f"list of epochs counted from 1 (e.g. [1, 5, 10]), got {value!r}")


def _batch_size(value, where: str) -> int | None:
    if value is None or (isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= 1):
        return None if value is None else int(value)
    raise FitOptionError(f"{where}: validation_batch_size must be a positive integer, got {value!r}")


def class_weighted(source, class_weight: dict):
    """``source`` with fit's class weights on its training batches. A plain tf.data pipeline
    gets them as a map at its end, so that the iterator the run checkpoints is still the
    whole pipeline's (behind a wrapper it would resume by skipping)."""
    from ..data.streaming import StreamingData
    if isinstance(source, StreamingData):
        _check_batches(source.source.element_spec)
        weigh = _weigh(class_weight)
        make = source.per_pipeline
        return StreamingData(source.source.map(weigh), source.what,
                             per_pipeline=make and (lambda context: make(context).map(weigh)))
    return ClassWeighted(source, class_weight)


class ClassWeighted:
    """Training data whose batches ``(x, y)`` become ``(x, y, weights)`` as ``fit``'s
    ``class_weight`` makes them: each example's weight is that of its class (the argmax of a
    one-hot ``y``, the rounded value of a sparse one), 1.0 for a class not listed."""

    def __init__(self, source, class_weight: dict):
        self.source = source
        self.class_weight = class_weight
        self.steps_per_epoch = source.steps_per_epoch
        self.warning = source.warning
        self.on_epoch_end = getattr(source, "on_epoch_end", None)

    def dataset(self, seed, epoch, start_step, replicas, training=True):
        ds = self.source.dataset(seed, epoch, start_step, replicas, training=training)
        if not training:
            return ds
        _check_batches(ds.element_spec)
        return ds.map(_weigh(self.class_weight))


def _check_batches(spec) -> None:
    """``fit``'s conditions for ``class_weight``, checked on the batches' spec before any tracing."""
    if not isinstance(spec, tuple) or len(spec) != 2 or isinstance(spec[1], (dict, tuple, list)):
        parts = len(spec) if isinstance(spec, tuple) else 1
        raise FitOptionError("class_weight needs batches (x, y) with one label array and no sample weights "
                             f"(as model.fit); these batches have {parts} part(s)")
    shape = spec[1].shape
    if shape.rank is None or shape.rank > 2:
        raise FitOptionError(f"class_weight needs one class per example: labels of shape {shape} (sparse "
                             "(batch,) or (batch, 1), or one-hot (batch, classes))")


def _weigh(class_weight: dict):
    import keras
    import tensorflow as tf
    size = max(class_weight) + 1
    table = tf.constant([class_weight.get(c, 1.0) for c in range(size)], dtype=keras.backend.floatx())

    def weigh(x, y):
        if y.shape.rank == 2 and y.shape[-1] != 1:
            classes = tf.argmax(y, axis=-1, output_type=tf.int32)
        else:
            labels = tf.reshape(y, [-1])
            classes = tf.cast(tf.round(tf.cast(labels, tf.float64)), tf.int32)
        known = (classes >= 0) & (classes < size)
        weights = tf.where(known, tf.gather(table, tf.clip_by_value(classes, 0, size - 1)), tf.ones_like(table[0]))
        return x, y, weights
    return weigh
