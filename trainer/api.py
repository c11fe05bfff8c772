"""``trainer.fit``: the Python entry point (a notebook, your own script).

    import trainer
    result = trainer.fit("runs/digits", job="jobs/digits.py", settings={"dropout": 0.3}, epochs=20)
    result = trainer.fit("runs/mine", model=build_model, data=trainer.ArrayData(x, y, batch_size=64),
                         epochs=5)
    print(result.exit_code, result.final_metrics, result.history[-1])

Same guarantees as the command line: calling it again with the same run dir
resumes exactly; ctrl+c (SIGINT) or SIGTERM commits a checkpoint at the next
step boundary and returns a result whose ``exit_code`` is 128 + the signal.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import types

from . import job as job_mod
from .config import ConfigError, TrainConfig
from .run import Result, train
from .signals import StopRequest


def fit(run_dir: str, job=None, *, model=None, data=None, callbacks=None, epochs: int | None = None,
        preset: str | None = None, settings=None, fresh: bool = False, **options) -> Result:
    """Train or resume the run in ``run_dir``.

    ``job``: a job file path, a module name, an imported module, or None for the
    default job; or give ``model`` (a compiled keras.Model, or a function that
    builds one) and ``data`` (what a job's ``build_data`` returns) instead.
    ``settings``: the job's settings (a dict or a Settings instance); ``options``:
    any TrainConfig field (``save_every_steps=50``, ``quiet=True``, ...).
    """
    if model is not None or data is not None:
        if job is not None or model is None or data is None:
            raise ValueError("give either job=..., or both model=... and data=...")
        loaded = job_mod.from_callables(model, data, callbacks)
    elif isinstance(job, types.ModuleType):
        loaded = job_mod.from_module(job, job.__name__)
    else:
        loaded = job_mod.load(job)
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    _, preset_epochs = loaded.choose(preset, dict(settings or {}))
    epochs = epochs or preset_epochs
    if epochs is None:
        raise ConfigError("epochs", "no number of epochs given", "pass epochs=N")
    cfg = TrainConfig(run_dir, epochs=epochs, **options)
    if not logging.getLogger().handlers:
        from .cli import setup_logging
        setup_logging()
    in_main = threading.current_thread() is threading.main_thread()
    return train(cfg, loaded, fresh=fresh, stop=StopRequest() if in_main else StopRequest(signals=()))
