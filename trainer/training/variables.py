"""The model's state that a checkpoint holds, created before the first step.

Keras creates optimizer slots and metric variables lazily, at the first
step: too late to restore into. ``prepare`` builds them from the spec of one
batch, checks that the job's model and data fit together, and groups every
variable by owner: the model's (weights and random-seed states, e.g.
Dropout's), the optimizer's (iterations, learning rate, slots), the metrics'
running totals (so a resumed epoch continues its means) and the trainer's
own JSON state.
"""
from __future__ import annotations

import keras
import tensorflow as tf

from ..errors import BAD_INPUT, TrainerError


class ModelError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """The job's model cannot be trained as given (exit code 2)."""


def state_variable() -> tf.Variable:
    """The string variable holding the trainer's JSON state, checkpointed with the weights.
    Make it outside the strategy's scope: a string cannot be mirrored (each worker keeps its own)."""
    return tf.Variable("", dtype=tf.string, trainable=False)


def check_model(model, job_label: str) -> keras.Model:
    if not isinstance(model, keras.Model):
        raise ModelError(f"job {job_label}: build_model returned {type(model).__name__}, expected a "
                         "keras.Model")
    if not getattr(model, "compiled", False) or model.optimizer is None:
        raise ModelError(f"job {job_label}: build_model returned an uncompiled model; call "
                         "model.compile(optimizer=..., loss=..., metrics=[...]) before returning it")
    spe = getattr(model, "steps_per_execution", 1)
    if isinstance(spe, bool) or not isinstance(spe, int) or spe < 1:  # (fit fails on these, less clearly)
        hint = " (\"auto\" is not offered by Keras 3)" if spe == "auto" else ""
        raise ModelError(f"job {job_label}: model.compile(steps_per_execution={spe!r}): expected a positive "
                         f"integer{hint}")
    return model


def prepare(model: keras.Model, batch_spec, job_label: str, strategy: tf.distribute.Strategy) -> dict:
    """Build the model, its metrics and optimizer slots from ``batch_spec`` (one global batch);
    the variables a checkpoint holds, grouped by owner (add the trainer's state variable)."""
    try:
        model._symbolic_build(data_batch=_zeros(batch_spec, as_tuple=True))  # noqa: SLF001 - no public way
    except Exception as exc:  # shape and dtype mismatches surface as many types
        _trace_train_step(model, batch_spec, strategy, job_label, exc)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    return {"model": {v.path: v for v in model.variables},
            "optimizer": {v.path: v for v in model.optimizer.variables},
            "metrics": {f"{i}/{v.path}": v for i, v in enumerate(model.metrics_variables)}}


def _zeros(batch_spec, as_tuple: bool = False):
    sample = tf.nest.map_structure(lambda s: tf.zeros([d or 1 for d in s.shape], s.dtype), batch_spec)
    return (sample,) if as_tuple and not isinstance(sample, tuple) else sample


def _trace_train_step(model: keras.Model, batch_spec, strategy, job_label: str, build_error: Exception) -> None:
    """Create the variables the way ``fit`` does for a model Keras cannot build symbolically (one
    without ``call``, e.g. a VAE whose ``train_step`` calls its parts): trace its ``train_step``
    once, without running it. Variables come into being during the trace with their initial
    values; no step runs, so weights, seed states and optimizer iterations stay as they are."""
    def step(batch):
        return strategy.run(model.train_step, args=(batch,))
    try:
        tf.function(step).get_concrete_function(batch_spec)
    except Exception as exc:  # noqa: BLE001 - the model's own code raises anything
        shapes = tf.nest.map_structure(lambda s: f"{tuple(s.shape)} {s.dtype.name}", batch_spec)
        raise ModelError(f"job {job_label}: the model does not accept the data: batches are {shapes}; "
                         f"{_first_line(build_error)}; tracing its train_step: {_first_line(exc)}") from exc


def _first_line(exc: Exception) -> str:
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:300]}"
