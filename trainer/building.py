"""A job made real: its data and compiled model under the strategy, and its Keras callbacks.

Used by ``train``, by ``export`` (to restore a checkpoint into the same
variables) and by the benchmarks, so that all of them build a job alike.
"""
from __future__ import annotations

import logging
import traceback
from dataclasses import dataclass

import keras
import tensorflow as tf

from .cluster.distribute import PEER_ERRORS
from .config import TrainConfig
from .data import accepted
from .data.shard_plan import Workers
from .data.sources import DataError
from .data.streaming import StreamingData
from .job import Job, JobError
from .rundir import TENSORBOARD_DIR, local_dir
from .storage import Storage
from .training import fit_options as fit_mod
from .training.callback_state import CallbackStateError, CallbackStates
from .training.variables import check_model, prepare, state_variable

log = logging.getLogger("trainer")


@dataclass
class Built:
    model: keras.Model
    train: object
    validation: object | None
    state_var: tf.Variable
    groups: dict
    callbacks: keras.callbacks.CallbackList | None = None  # the job's (see add_callbacks), with
    callback_states: CallbackStates | None = None         # their state's variables in ``groups``


def build(job: Job, cfg: TrainConfig, cluster) -> Built:
    """The job's data and compiled model, checked against each other, under the strategy.

    Keras's session is cleared first: layer names (and so the checkpoint's keys) come from
    global counters, which a model built earlier in this process would have advanced."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    with cluster.strategy.scope():
        raw = _call(job, "build_data", cluster.workers)
        train_raw, val_raw = raw if isinstance(raw, tuple) and len(raw) == 2 else (raw, None)
        try:
            train = accepted.from_job(train_raw, f"job {job.label}: build_data's training data")
            validation = accepted.validation_from_job(val_raw, train, f"job {job.label}: build_data's validation data",
                                                      job.fit_options().validation_batch_size)
        except ValueError as exc:
            raise JobError(str(exc)) from exc
        if train is None:
            raise JobError(f"job {job.label}: build_data returned no training data")
        class_weight = job.fit_options().class_weight
        if class_weight:
            train = fit_mod.class_weighted(train, class_weight)
        model = check_model(_call(job, "build_model", cluster.workers), job.label)
        groups = prepare(model, accepted.batch_spec(train, cfg.seed), job.label, cluster.strategy)
    groups["trainer"] = {"state": state_variable()}
    if isinstance(train, StreamingData):
        groups["data"] = train.bind(cluster.strategy, Workers(cluster.workers, cluster.index, cluster.replicas.first,
                                                              cfg.data_shards, cluster.gather))
    for source in (train, validation):
        if source is not None and source.warning:
            log.warning("%s", source.warning)
    return Built(model, train, validation, groups["trainer"]["state"], groups)


def add_callbacks(built: Built, job: Job, cfg: TrainConfig, storage: Storage, chief: bool) -> None:
    """The job's callbacks into ``built``, and the variables of their state into its checkpoint."""
    built.callbacks = _callbacks(job, built.model, cfg, storage, built.train.steps_per_epoch, chief)
    try:
        built.callback_states = CallbackStates(built.callbacks.callbacks if built.callbacks else [], built.model)
    except CallbackStateError as exc:
        raise JobError(f"job {job.label}: {exc}") from exc
    if built.callback_states.variables:
        built.groups["callbacks"] = built.callback_states.variables


def _call(job: Job, name: str, workers: int = 1):
    """The job's function ``name``; what it raises, as a JobError with its traceback logged. Not
    so a collective's failure with several workers: under the strategy's scope, making a variable
    broadcasts its first value, which fails when another worker is gone (a lost peer, not the
    job's fault; the run ends for a requeue)."""
    try:
        return job.call(name)
    except (DataError, JobError):
        raise
    except Exception as exc:
        if workers > 1 and isinstance(exc, PEER_ERRORS):
            raise
        log.error("job %s: %s raised:\n%s", job.label, name, "".join(traceback.format_exception(exc)).rstrip())
        raise JobError(f"job {job.label}: {name} failed ({type(exc).__name__}: {exc}); see the traceback "
                       "above") from exc


def _callbacks(job: Job, model, cfg: TrainConfig, storage: Storage, steps: int, chief: bool):
    """The job's Keras callbacks (on every worker, as with model.fit; TensorBoard on the chief),
    called by the loop at the usual hooks."""
    callbacks = (list(_call(job, "callbacks")) if job.make_callbacks else []) + list(job.extra_callbacks)
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            raise JobError(f"job {job.label}: callbacks() must return keras.callbacks.Callback objects, "
                           f"got {type(cb).__name__}")
    if cfg.tensorboard and chief:
        tb_dir = local_dir(storage, TENSORBOARD_DIR, cfg.staging_dir)
        callbacks.append(keras.callbacks.TensorBoard(tb_dir, update_freq="epoch"))
    if not callbacks:
        return None
    return keras.callbacks.CallbackList(callbacks, model=model, epochs=cfg.epochs, steps=steps, verbose=0)
