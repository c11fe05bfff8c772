"""What a job's ``build_data`` may return, turned into a data source: ArrayData and
EpochBatches as they are, a plain tf.data.Dataset as StreamingData, a keras PyDataset
as EpochBatches; validation arrays batched as ``model.fit`` batches them."""
from __future__ import annotations

import inspect

import tensorflow as tf

from .sources import SINGLE, ArrayData, EpochBatches
from .streaming import StreamingData

FIT_BATCH_SIZE = 32  # model.fit's batch size for arrays given none (Keras's ArrayDataAdapter)


def from_job(value, what: str):
    """A job's data (one of the accepted kinds) as a source with ``dataset()``; ValueError if none fits."""
    if value is None or isinstance(value, (ArrayData, EpochBatches, StreamingData)):
        return value
    if isinstance(value, tf.data.Dataset):
        return StreamingData(value, what)
    if _is_input_function(value):
        return _per_pipeline(value, what)
    import keras
    if isinstance(value, keras.utils.PyDataset):
        return _from_py_dataset(value, what)
    raise ValueError(f"{what} must be trainer.ArrayData, trainer.EpochBatches, a tf.data.Dataset of batches, "
                     "a function of a tf.distribute.InputContext that returns one, or a keras.utils.PyDataset, got "
                     f"{type(value).__name__}")


def _is_input_function(value) -> bool:
    """A function of one argument (a ``tf.distribute.InputContext``), as
    ``distribute_datasets_from_function`` takes."""
    if not callable(value) or isinstance(value, type):
        return False
    try:
        parameters = inspect.signature(value).parameters.values()
    except (TypeError, ValueError):
        return False
    required = [p for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(required) == 1


def _per_pipeline(make, what: str) -> StreamingData:
    """A stream made per input pipeline by the job's function: with one pipeline it is the global
    stream; with logical shards, each shard is one input pipeline (see ``sharded``)."""
    dataset = make(tf.distribute.InputContext())
    if not isinstance(dataset, tf.data.Dataset):
        raise ValueError(f"{what}: a function of a tf.distribute.InputContext must return a tf.data.Dataset of "
                         f"batches, got {type(dataset).__name__}")
    return StreamingData(dataset, what, per_pipeline=make)


def _from_py_dataset(value, what: str) -> EpochBatches:
    import keras
    steps = value.num_batches
    if steps is None or steps < 1:
        raise ValueError(f"{what}: the PyDataset has no finite num_batches ({steps})")
    shuffles = type(value).on_epoch_end is not keras.utils.PyDataset.on_epoch_end
    warning = (f"{what} is a PyDataset that overrides on_epoch_end: resume is exact only if its "
               "__getitem__ returns the same batch for the same index in the same epoch (the trainer "
               "calls on_epoch_end after every epoch, but not for the epochs before a resume)"
               if shuffles else None)

    def batches(epoch, start_step, seed):
        return (value[i] for i in range(start_step, steps))
    source = EpochBatches(batches, steps, warning=warning)
    source.on_epoch_end = value.on_epoch_end  # the loop calls it after every epoch, as fit does
    return source


def inputs_as_fit_reads_them(value):
    """Arrays as ``fit`` reads them, for ArrayData: a list of arrays is several inputs (or outputs),
    so a tuple (to ArrayData a list is one index-addressable array); a pandas DataFrame or Series
    is its NumPy array (indexing one by position would select a column)."""
    if isinstance(value, list) and value and all(hasattr(item, "shape") for item in value):
        return tuple(inputs_as_fit_reads_them(item) for item in value)
    if type(value).__module__.split(".")[0] == "pandas" and hasattr(value, "to_numpy"):
        return value.to_numpy()
    return value


def validation_from_job(value, train, what: str, batch_size: int | None = None):
    """Validation data: a source as above, or arrays ``(x[, y[, sample_weight]])`` in order, in
    batches of ``batch_size`` (fit's ``validation_batch_size``), else of the training data's batch
    size (arrays: ArrayData), else of 32: ``model.fit``'s rule (``validation_batch_size or
    batch_size``, with ``batch_size`` None for a dataset and then 32 for arrays)."""
    if isinstance(value, list):
        value = tuple(value)
    if not (isinstance(value, tuple) and value and not isinstance(value[0], tf.data.Dataset)):
        return from_job(value, what)
    if not 1 <= len(value) <= 3:
        raise ValueError(f"{what} must be (x_val, y_val) or (x_val, y_val, val_sample_weight), as for "
                         f"model.fit; got {len(value)} items")
    arrays = [inputs_as_fit_reads_them(item) for item in value]
    if isinstance(train, ArrayData):
        return ArrayData(*arrays, batch_size=batch_size or train.batch_size, prepare=train.prepare, shuffle=False)
    return ArrayData(*arrays, batch_size=batch_size or FIT_BATCH_SIZE, shuffle=False)


def batch_spec(source, seed: int):
    """The element spec of one global batch (for building the model before its first step)."""
    return source.dataset(seed, 0, 0, SINGLE).element_spec
