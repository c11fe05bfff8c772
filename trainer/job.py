"""What a job must provide, and loading one from a file or a module.

A job is a Python file (anywhere) or an importable module with:

``build_model(settings) -> keras.Model``   required; a compiled model
``build_data(settings) -> train | (train, validation)``   required; see ``trainer.data.sources``
``Settings``   optional dataclass of the job's own settings (each becomes a flag)
``PRESETS``, ``DEFAULT_PRESET``   optional named sets of settings (``--preset``);
    a preset may also set ``epochs``
``EPOCHS``   optional default for ``--epochs``
``callbacks(settings) -> list[keras.callbacks.Callback]``   optional
``fit_kwargs(settings) -> dict``   optional ``model.fit`` arguments: ``class_weight``, ``validation_freq``

Settings change the model or the data order unless declared with
``trainer.setting(..., may_change=True)``, so a run refuses to resume with
other values (``config.json`` records them).
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from . import examples
from . import settings as settings_mod
from .errors import BAD_INPUT, TrainerError
from .training import fit_options as fit_mod

REQUIRED = ("build_model", "build_data")


class JobError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """The job cannot be used; the message names the job and what was expected (exit code 2)."""


@dataclass
class Job:
    """A loaded job: its functions, its settings and where it came from."""
    name: str                      # as recorded in config.json: a file's absolute path or a module name
    build_model: Callable
    build_data: Callable
    settings_cls: type | None = None
    presets: dict = field(default_factory=dict)
    default_preset: str | None = None
    default_epochs: int | None = None
    make_callbacks: Callable | None = None
    make_fit_kwargs: Callable | None = None
    extra_callbacks: list = field(default_factory=list)  # given to trainer.fit(callbacks=...)
    settings: Any = None           # the instance, once chosen
    fit_overrides: dict = field(default_factory=dict)    # fit arguments given to trainer.fit
    _fit: fit_mod.FitOptions | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return _label(self.name)

    def choose(self, preset: str | None, values: dict) -> tuple[Any, int | None]:
        """Settings from the dataclass defaults, then the preset, then ``values``; and the
        preset's epochs (or the job's EPOCHS)."""
        self._fit = None  # (fit_kwargs may depend on the settings)
        chosen = dict(self._preset(preset))
        epochs = chosen.pop("epochs", self.default_epochs)
        chosen.update({k: v for k, v in values.items() if v is not None})
        if self.settings_cls is None:
            if chosen:
                raise settings_mod.SettingError(next(iter(chosen)), f"{self.label} has no Settings dataclass")
            self.settings = None
        else:
            self.settings = settings_mod.build(self.settings_cls, chosen, self.label)
        return self.settings, epochs

    def _preset(self, name: str | None) -> dict:
        if name is None:
            name = self.default_preset
            if name is None:
                return {}
        if name not in self.presets:
            known = ", ".join(self.presets) or "none"
            raise settings_mod.SettingError("preset", f"{self.label} has no preset {name!r} (presets: {known})")
        return self.presets[name]

    def call(self, fn_name: str):
        fn = {"callbacks": self.make_callbacks, "fit_kwargs": self.make_fit_kwargs}.get(fn_name) \
            or getattr(self, fn_name)
        return fn(self.settings) if _takes_argument(fn) else fn()

    def fit_options(self) -> fit_mod.FitOptions:
        """The job's ``fit_kwargs(settings)`` with ``trainer.fit``'s arguments over them, checked (once
        the settings are chosen)."""
        if self._fit is None:
            kwargs = {}
            if self.make_fit_kwargs:
                try:
                    kwargs = self.call("fit_kwargs")
                except Exception as exc:
                    raise JobError(f"job {self.label}: fit_kwargs failed: {_last_frame(exc)}") from exc
            if isinstance(kwargs, dict):
                kwargs = {**kwargs, **self.fit_overrides}
            self._fit = fit_mod.from_kwargs(kwargs, f"job {self.label}: fit_kwargs")
        return self._fit

    def settings_json(self) -> dict:
        return settings_mod.to_json(self.settings) if self.settings is not None else {}

    def identity(self) -> dict:
        return {"job": self.name,
                "settings": settings_mod.identity(self.settings) if self.settings is not None else {},
                **self.fit_options().identity()}


def _takes_argument(fn) -> bool:
    try:
        return len(inspect.signature(fn).parameters) >= 1
    except (TypeError, ValueError):
        return True


def load(spec: str | None) -> Job:
    """Load the job named by ``spec``: an example's name (``digits``), a ``.py`` file path, or a
    dotted module name; None: the default example. An example is recorded by its name, so a run
    resumes wherever the package is installed."""
    spec = spec or examples.DEFAULT
    example = examples.find(spec)
    if example is not None:
        return from_module(_import_file(str(example)), spec)
    if spec == examples.DEFAULT:
        raise JobError(f"the default job {spec} is not installed (expected trainer/jobs/{spec}.py in the package, "
                       "or jobs/ beside trainer/ in a checkout); reinstall keras-resume, or pass --job my_job.py")
    if spec.endswith(".py") or os.sep in spec or os.path.exists(spec):
        module, name = _import_file(spec), str(Path(spec).resolve())
    else:
        module, name = _import_module(spec), spec
    return from_module(module, name)


def same_job(recorded: str | None, name: str) -> bool:
    """Do two recorded job names mean the same job? An example may be named by its name or by
    its file's path (runs recorded the path before examples had names)."""
    if recorded == name:
        return True
    files = [_file_of(n) for n in (recorded, name)]
    return files[0] is not None and files[0] == files[1]


def describe(name: str | None) -> str:
    """A recorded job name for a message: an example's name with its file."""
    example = examples.find(name) if name else None
    return f"{name!r} ({example})" if example else repr(name)


def _file_of(name: str | None) -> Path | None:
    if not name:
        return None
    example = examples.find(name)
    if example is not None:
        return example.resolve()
    return Path(name).resolve() if os.path.isabs(name) else None


def _import_file(spec: str):
    path = Path(spec).expanduser()
    if not path.is_file():
        raise JobError(f"--job {spec}: no such file (expected an example's name such as digits (see `trainer "
                       "jobs`), a Python file such as my_job.py, or a module name such as mypkg.jobs.cifar)")
    resolved = path.resolve()
    module_name = "trainer_job_" + hashlib.sha1(str(resolved).encode()).hexdigest()[:10]
    if module_name in sys.modules:
        return sys.modules[module_name]
    # a job may import modules that sit beside it, as it would when run as a script
    if str(resolved.parent) not in sys.path:
        sys.path.insert(0, str(resolved.parent))
    spec_obj = importlib.util.spec_from_file_location(module_name, resolved)
    module = importlib.util.module_from_spec(spec_obj)
    sys.modules[module_name] = module  # dataclasses and pickling look modules up here
    try:
        spec_obj.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise JobError(f"--job {spec}: importing it failed: {_last_frame(exc)}") from exc
    return module


def _import_module(spec: str):
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise JobError(f"--job {spec}: no module named {exc.name!r} (a file path must end in .py; "
                           "a module must be importable: is its package on PYTHONPATH? `trainer jobs` lists the "
                           "examples' names)") from exc
        raise JobError(f"--job {spec}: importing it failed: {_last_frame(exc)}") from exc
    except Exception as exc:
        raise JobError(f"--job {spec}: importing it failed: {_last_frame(exc)}") from exc


def _last_frame(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


def _label(name: str) -> str:
    """A file job's path relative to the current folder when that is shorter."""
    if not os.path.isabs(name):
        return name
    rel = os.path.relpath(name)
    return rel if len(rel) < len(name) else name


def from_module(module, name: str) -> Job:
    label = _label(name)
    missing = [attr for attr in REQUIRED if not callable(getattr(module, attr, None))]
    if missing:
        raise JobError(f"job {label} lacks {' and '.join(f'{m}(settings)' for m in missing)}; a job defines "
                       "build_model(settings) -> compiled keras.Model and build_data(settings) -> "
                       "trainer.ArrayData | trainer.EpochBatches | (train, validation) (see README: Your own job)")
    settings_cls = getattr(module, "Settings", None)
    if settings_cls is not None and not dataclasses.is_dataclass(settings_cls):
        raise JobError(f"job {label}: Settings must be a dataclass (@dataclasses.dataclass), "
                       f"got {type(settings_cls).__name__}")
    presets = getattr(module, "PRESETS", {}) or {}
    if not isinstance(presets, dict) or not all(isinstance(v, dict) for v in presets.values()):
        raise JobError(f"job {label}: PRESETS must be a dict of dicts, e.g. {{'small': {{'depth': 8}}}}")
    default_preset = getattr(module, "DEFAULT_PRESET", None) or (next(iter(presets)) if presets else None)
    epochs = getattr(module, "EPOCHS", None)
    if epochs is not None and (not isinstance(epochs, int) or epochs < 1):
        raise JobError(f"job {label}: EPOCHS must be a positive integer, got {epochs!r}")
    make_callbacks, make_fit_kwargs = getattr(module, "callbacks", None), getattr(module, "fit_kwargs", None)
    return Job(name, module.build_model, module.build_data, settings_cls, presets, default_preset, epochs,
               make_callbacks if callable(make_callbacks) else None,
               make_fit_kwargs if callable(make_fit_kwargs) else None)


def from_callables(model, data, name: str | None = None) -> Job:
    """A job for ``trainer.fit(model=..., data=...)``: a model (or a function building one) and data."""
    build_model = model if callable(model) and not hasattr(model, "fit") else (lambda: model)
    build_data = data if callable(data) else (lambda: data)
    label = name or f"python:{getattr(model, 'name', getattr(model, '__name__', 'model'))}"
    return Job(label, build_model, build_data)
