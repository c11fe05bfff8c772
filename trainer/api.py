"""``trainer.fit``: the Python entry point (a notebook, your own script), read like ``model.fit``.

    import trainer
    result = trainer.fit("runs/mine", model=build_model, x=x, y=y, batch_size=64, epochs=5,
                         validation_data=(vx, vy), class_weight={0: 1.0, 1: 5.0}, callbacks=[...])
    result = trainer.fit("runs/digits", job="jobs/digits.py", settings={"dropout": 0.3}, epochs=20)
    result = trainer.fit("runs/own", model=build_model, data=trainer.ArrayData(x, y, batch_size=64), epochs=5)
    print(result.exit_code, result.final_metrics, result.keras_history["loss"])

Same guarantees as the command line: calling it again with the same run dir
resumes exactly; ctrl+c (SIGINT) or SIGTERM commits a checkpoint at the next
step boundary and returns a result whose ``exit_code`` is 128 + the signal.

One rule for failures: what the command line reports with an exit code (a
:class:`trainer.errors.TrainerError`: a bad job, setting, option or run dir,
missing data, an unusable checkpoint or storage) is logged as one line and
returned as ``Result(exit_code=...)`` with the code ``train`` exits with;
nothing is raised. Only arguments that ``trainer.fit`` cannot take at all (as
``model.fit`` would refuse them) raise ``TypeError`` or ``ValueError``.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import threading
import types

from . import job as job_mod
from .config import ConfigError, TrainConfig, current_names, log_format_from
from .data.accepted import FIT_BATCH_SIZE, inputs_as_fit_reads_them
from .data.sources import ArrayData, EpochBatches
from .errors import TrainerError, report
from .run import Result, train
from .steering.signals import StopRequest

# model.fit arguments with no meaning for a run that resumes itself, and what to do instead
NOT_TAKEN = {
    "initial_epoch": "a run dir knows where it stopped: call trainer.fit again with the same run dir",
    "steps_per_epoch": "give the data its epoch length: trainer.EpochBatches(batches, steps_per_epoch=N)",
    "validation_steps": "give validation data of the length to evaluate",
}


def fit(run_dir: str, job=None, *, model=None, x=None, y=None, batch_size: int | None = None,
        epochs: int | None = None, verbose=None, callbacks=None, validation_split: float = 0.0,
        validation_data=None, shuffle: bool = True, class_weight: dict | None = None, sample_weight=None,
        validation_batch_size: int | None = None, validation_freq=None, data=None, preset: str | None = None,
        settings=None, fresh: bool = False, **options) -> Result:
    """Train or resume the run in ``run_dir``, taking ``model.fit``'s arguments.

    ``model``: a compiled keras.Model, or a function that builds one (build it inside
    the function for an exact resume in a new process). ``x``, ``y``, ``sample_weight``,
    ``batch_size``, ``shuffle``, ``validation_data``, ``validation_split``,
    ``validation_batch_size``, ``class_weight``, ``validation_freq``, ``callbacks``,
    ``epochs``: as for ``model.fit`` (arrays, or a dict or list of arrays, become
    :class:`trainer.ArrayData`; a ``tf.data.Dataset`` or ``keras.utils.PyDataset`` as ``x``
    is used as is; docs/reference/fit-compatibility.md lists every argument).
    ``data``: instead of ``x``..., what a job's ``build_data`` returns.
    ``job``: a job file path, a module name, an imported module (or None for the
    default job) instead of ``model``; ``settings``: its settings (a dict or a
    Settings instance); ``callbacks``, ``class_weight`` and ``validation_freq`` apply
    to it too. ``verbose=0`` is ``quiet=True``; ``options``: any TrainConfig field
    (``save_every_steps=50``, ``log_every_steps=1``, ``log_format="json"``, ...).

    Returns the run's Result; an expected failure is returned as its exit code, not raised
    (see the module's docstring).
    """
    refused = sorted(set(options) & set(NOT_TAKEN))
    if refused:
        raise TypeError("trainer.fit does not take " + "; ".join(f"{k} ({NOT_TAKEN[k]})" for k in refused))
    array_args = {"x": x, "y": y, "sample_weight": sample_weight, "batch_size": batch_size,
                  "validation_data": validation_data, "validation_split": validation_split or None}
    given = [k for k, v in array_args.items() if v is not None]
    if verbose == 0:
        options.setdefault("quiet", True)
    elif verbose not in (None, "auto", 1, 2):
        raise ValueError(f"verbose must be 'auto', 0, 1 or 2, as for model.fit; got {verbose!r}")
    if not logging.getLogger().handlers:
        from .cli import setup_logging
        setup_logging()
    try:
        loaded = _load(job, model, data, given, lambda: _data_from_arrays(
            x, y, sample_weight, batch_size, shuffle, validation_data, validation_split))
        loaded.extra_callbacks = list(callbacks or [])
        loaded.fit_overrides = {k: v for k, v in (("class_weight", class_weight), ("validation_freq", validation_freq),
                                                  ("validation_batch_size", validation_batch_size)) if v is not None}
        options.setdefault("log_format", log_format_from(os.environ))
        cfg = _config(run_dir, loaded, preset, settings, epochs, options)
    except TrainerError as exc:
        return Result(report(exc))
    in_main = threading.current_thread() is threading.main_thread()
    return train(cfg, loaded, fresh=fresh, stop=StopRequest() if in_main else StopRequest(signals=()))


def _load(job, model, data, given: list[str], arrays_data) -> job_mod.Job:
    """The job: ``job``; or ``model`` with ``data``, or with the array arguments ``given``
    (``arrays_data()`` makes them a job's data); or the default job."""
    if job is not None:
        if model is not None or data is not None or given:
            raise ValueError(f"give either job=..., or model=... with its data, not both "
                             f"(got job and {', '.join(['model'] * (model is not None) + given)})")
        return job_mod.from_module(job, job.__name__) if isinstance(job, types.ModuleType) else job_mod.load(job)
    if model is not None or data is not None or given:
        if model is None or (data is None) == ("x" not in given) or (data is not None and given):
            raise ValueError("give model=... and its data: either x=... (with y, batch_size, validation_data, "
                             "... as for model.fit) or data=... (what a job's build_data returns)")
        return job_mod.from_callables(model, data if data is not None else arrays_data())
    return job_mod.load(None)


def _config(run_dir: str, loaded: job_mod.Job, preset: str | None, settings, epochs: int | None,
            options: dict) -> TrainConfig:
    """The run's TrainConfig, once the job's settings are chosen (its preset may give the epochs)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    _, preset_epochs = loaded.choose(preset, dict(settings or {}))
    epochs = epochs or preset_epochs
    if epochs is None:
        raise ConfigError("epochs", "no number of epochs given", "pass epochs=N")
    return TrainConfig(run_dir, epochs=epochs, **current_names(options))


def _data_from_arrays(x, y, sample_weight, batch_size, shuffle, validation_data, validation_split):
    """``model.fit``'s data arguments as a job's data: (training, validation). Validation arrays
    stay arrays: the job's path batches them as fit does (``validation_from_job``)."""
    import keras
    import tensorflow as tf
    if isinstance(x, (tf.data.Dataset, keras.utils.PyDataset)):
        extra = [k for k, v in (("y", y), ("sample_weight", sample_weight), ("batch_size", batch_size))
                 if v is not None]
        if extra:
            raise ValueError(f"x is a {type(x).__name__}: it brings its own labels and batches, so "
                             f"{', '.join(extra)} cannot be given (as with model.fit); put them into its batches")
        if validation_split:
            raise ValueError(f"validation_split needs arrays (as with model.fit); x is a {type(x).__name__}: "
                             "give validation_data=(x_val, y_val) or a validation dataset instead")
        return x, validation_data
    _check_x(x)
    if not isinstance(shuffle, bool):
        raise ValueError(f"shuffle must be True or False for arrays, got {shuffle!r} (fit's \"batch\" shuffles "
                         "HDF5 data in batch-sized chunks; here shuffle=True reads any index-addressable data, h5py "
                         "datasets included, in a permutation drawn from the seed and the epoch)")
    arrays = tuple(inputs_as_fit_reads_them(a) for a in (x, y, sample_weight))
    if validation_split and validation_data is None:
        arrays, held_out = _split(arrays, validation_split)
        validation_data = tuple(held_out[:2]) if held_out[2] is None else held_out
    return ArrayData(*arrays, batch_size=batch_size or FIT_BATCH_SIZE, shuffle=shuffle), validation_data


def _check_x(x) -> None:
    """Refuse the forms of ``x`` that fit takes but a resumable run cannot, saying what to give instead."""
    import collections.abc
    if isinstance(x, (types.GeneratorType, collections.abc.Iterator)):
        raise ValueError("x is a generator (or iterator): it can be read only once, so no epoch can be repeated "
                         "or resumed. Give data=trainer.EpochBatches(lambda epoch, start_step, seed: <that epoch's "
                         "batches from start_step on>, steps_per_epoch=N), or x=tf.data.Dataset.from_generator(...) "
                         "(re-iterated every epoch), or a keras.utils.PyDataset")
    if isinstance(x, (ArrayData, EpochBatches)):
        raise ValueError(f"x is a {type(x).__name__}: give it as data=... (what a job's build_data returns)")
    if not isinstance(x, (dict, list, tuple)) and not hasattr(x, "__getitem__"):
        raise ValueError(f"x is a {type(x).__name__}: give arrays (NumPy, tf.Tensor, or a dict or list of them), "
                         "a tf.data.Dataset or a keras.utils.PyDataset (e.g. a PyDataset whose __getitem__ returns "
                         "the loader's i-th batch)")


def _split(arrays: tuple, validation_split: float) -> tuple[tuple, tuple]:
    """``model.fit``'s ``validation_split`` (Keras's ``train_validation_split``): the last
    fraction of the arrays, before any shuffling, becomes the validation data."""
    import tensorflow as tf
    if not 0 < validation_split < 1:
        raise ValueError(f"validation_split must be between 0 and 1, got {validation_split!r}")
    size = len(tf.nest.flatten(arrays[0])[0])
    split_at = int(math.floor(size * (1.0 - validation_split)))
    if split_at in (0, size):
        raise ValueError(f"validation_split={validation_split} of {size} examples leaves no training or no "
                         "validation examples")

    def part(start: int, end: int) -> tuple:
        return tuple(None if a is None else tf.nest.map_structure(lambda t: t[start:end], a) for a in arrays)
    return part(0, split_at), part(split_at, size)
