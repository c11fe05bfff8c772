"""Preemption-tolerant Keras/TensorFlow training: exact mid-epoch resume,
signal-driven checkpoint flushes, LR steering and a training monitor, for
your own job (model + data) on one machine or many.

The public API (importing it loads TensorFlow only when first used):

* ``fit(run_dir, job=... | model=..., x=..., y=..., ... | model=..., data=...)``: ``model.fit``, resumable; returns a ``Result``
* ``ArrayData``, ``EpochBatches``: training data that resumes exactly
* ``ExampleRandom``: per-example random numbers for augmentation
* ``setting``: a job setting with help text
* ``DataError``: raise it from a job when its data is missing or damaged (exit code 4)
"""
from .settings import setting

__version__ = "0.2.0"
__all__ = ["fit", "ArrayData", "EpochBatches", "ExampleRandom", "DataError", "Result", "setting"]

_LAZY = {"fit": "api", "Result": "run", "ArrayData": "data.sources", "EpochBatches": "data.sources",
         "DataError": "data.sources", "ExampleRandom": "data.example_random"}


def __getattr__(name):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
