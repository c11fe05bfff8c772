"""Keras callbacks that continue where they were after a resume or a rollback.

Keras keeps no callback state across a restart (keras-team/keras#17012): an
``EarlyStopping`` would start counting its patience again, a
``ReduceLROnPlateau`` would forget its plateau, a ``ModelCheckpoint`` would
take the first epoch after a resume for the best. Here every checkpoint holds
the state of every callback, taken at the same moment as the weights, and a
start restores it right after ``on_train_begin`` (which resets it in Keras).

Three kinds of callbacks:

* the stateful ones that ship with Keras: one adapter each, reading and
  writing the attributes Keras keeps (large state, EarlyStopping's best
  weights, goes into checkpoint variables, not JSON);
* callbacks with ``get_state()`` (a dict of JSON values) and
  ``set_state(state)``: the protocol for the job's own callbacks;
* the rest: stateless ones pass; one that looks stateful (an attribute not
  named after a constructor argument) gets one warning at start.
"""
from __future__ import annotations

import inspect
import json
import logging
import os

import keras
import numpy as np
import tensorflow as tf

from ..errors import BAD_INPUT, TrainerError

log = logging.getLogger("trainer")


class CallbackStateError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """A callback's state cannot be kept (exit code 2): the message names the callback."""


def _plain(value):
    """A JSON value for what Keras keeps in an attribute (numpy scalars and arrays, tensors)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (tf.Tensor, tf.Variable, keras.Variable, np.ndarray, np.generic)):
        return np.asarray(value).tolist()
    return value


class _Attributes:
    """Keeps the named instance attributes, as Keras spells them in the installed version."""

    def __init__(self, *names: str):
        self.names = names

    def slots(self, cb, model) -> list:
        return []

    def before_train_begin(self, cb, resuming: bool) -> None:
        pass

    def after_restore(self, cb, mid_epoch: bool) -> None:
        pass

    def get(self, cb, slots) -> dict:
        return {name: _plain(getattr(cb, name, None)) for name in self.names}

    def set(self, cb, state: dict, slots) -> None:
        for name in self.names:
            if name in state:
                setattr(cb, name, state[name])


class _EarlyStopping(_Attributes):
    """Its counters, and with ``restore_best_weights`` the best weights, in checkpoint variables
    made before the restore with the model weights' shapes."""

    def __init__(self):
        super().__init__("wait", "best", "best_epoch", "stopped_epoch")
        self._assigned = {}  # id(callback) -> the best_weights list last copied into the slots

    def slots(self, cb, model) -> list:
        if not cb.restore_best_weights:
            return []
        return [tf.Variable(tf.zeros(w.shape, w.dtype), trainable=False) for w in model.weights]

    def get(self, cb, slots) -> dict:
        state = super().get(cb, slots)
        best = cb.best_weights if slots else None
        if best is not None and self._assigned.get(id(cb)) is not best:
            for slot, value in zip(slots, best):
                slot.assign(value)
            self._assigned[id(cb)] = best
        state["best_weights"] = len(slots) if best is not None else None
        return state

    def set(self, cb, state: dict, slots) -> None:
        super().set(cb, state, slots)
        count = state.get("best_weights")
        if count is None or not slots:
            return
        if count != len(slots):
            log.warning("%s: the checkpoint's best weights are for another model (%d tensors, this one has "
                        "%d); they restart", type(cb).__name__, count, len(slots))
            return
        cb.best_weights = [slot.numpy() for slot in slots]
        self._assigned[id(cb)] = cb.best_weights


class _CSVLogger(_Attributes):
    """The file continues: the state records its length, a restore cuts off anything written
    after that checkpoint (a row of an epoch that is trained again) and appends from there."""

    def __init__(self):
        super().__init__("keys")
        self._append = {}  # id(callback) -> its own ``append``

    def before_train_begin(self, cb, resuming: bool) -> None:
        if resuming:  # on_train_begin would truncate the file (append=False): open it to append
            self._append[id(cb)], cb.append = cb.append, True

    def get(self, cb, slots) -> dict:
        if cb.csv_file is not None and not cb.csv_file.closed:
            cb.csv_file.flush()
        size = os.path.getsize(cb.filename) if os.path.exists(cb.filename) else 0
        return {**super().get(cb, slots), "size": size}

    def set(self, cb, state: dict, slots) -> None:
        cb.append = self._append.pop(id(cb), cb.append)
        size = state["size"]
        if cb.csv_file is not None and not cb.csv_file.closed:
            cb.csv_file.close()
        have = os.path.getsize(cb.filename) if os.path.exists(cb.filename) else 0
        if have < size:
            log.warning("%s: %s has %d bytes, the checkpoint recorded %d: rows were lost outside the "
                        "trainer; appending after what is there", type(cb).__name__, cb.filename, have, size)
        with open(cb.filename, "ab") as fh:
            fh.truncate(min(have, size))
        cb.csv_file = open(cb.filename, "a")  # noqa: SIM115 - closed by on_train_end, as Keras does
        cb.writer = None
        cb.append_header = size == 0
        super().set(cb, state, slots)


class _TensorBoard(_Attributes):
    """Step counters; the event files are flushed with every checkpoint, so that what a stopped
    run wrote before its checkpoint is on disk (a stop does not reach on_train_end)."""

    def __init__(self):
        super().__init__("_global_train_batch", "_global_test_batch")

    def get(self, cb, slots) -> dict:
        for writer in cb._writers.values():
            writer.flush()
        return super().get(cb, slots)


class _LearningRateScheduler(_Attributes):
    """No state of its own (the rate is the optimizer's, in the checkpoint), but a resume in
    the middle of an epoch calls ``on_epoch_begin`` again, and a schedule of the current rate
    (``lr * 0.9``) would be applied twice: that one call is skipped."""

    def after_restore(self, cb, mid_epoch: bool) -> None:
        if mid_epoch:
            def skip_once(epoch, logs=None):
                del cb.on_epoch_begin  # the class's method again from the next epoch on
            cb.on_epoch_begin = skip_once


_STATELESS = _Attributes()

# The installed Keras's callbacks (keras/src/callbacks/), most specific first.
KNOWN: list[tuple[type, _Attributes]] = [
    (keras.callbacks.EarlyStopping, _EarlyStopping()),
    (keras.callbacks.ReduceLROnPlateau, _Attributes("wait", "best", "cooldown_counter")),
    (keras.callbacks.ModelCheckpoint, _Attributes("best", "_batches_seen_since_last_saving",
                                                  "_last_batch_seen", "_current_epoch")),
    (keras.callbacks.CSVLogger, _CSVLogger()),
    (keras.callbacks.TensorBoard, _TensorBoard()),
    (keras.callbacks.History, _Attributes("epoch", "history")),
    (keras.callbacks.SwapEMAWeights, _Attributes("_ema_weights_in_model")),
    (keras.callbacks.LearningRateScheduler, _LearningRateScheduler()),
    (keras.callbacks.TerminateOnNaN, _STATELESS),
    (keras.callbacks.RemoteMonitor, _STATELESS),
    (keras.callbacks.LambdaCallback, _STATELESS),
    (keras.callbacks.ProgbarLogger, _STATELESS),
]
if hasattr(keras.callbacks, "OrbaxCheckpoint"):  # (not tested here: needs orbax)
    KNOWN.insert(0, (keras.callbacks.OrbaxCheckpoint,
                     _Attributes("best", "_batches_seen_since_last_saving", "_last_batch_seen",
                                 "_total_batches_seen")))


class _Protocol(_Attributes):
    """A callback of the job's with ``get_state()`` and ``set_state(state)``."""

    def get(self, cb, slots) -> dict:
        state = cb.get_state()
        try:
            return json.loads(json.dumps(_plain(state), allow_nan=True))
        except (TypeError, ValueError) as exc:
            raise CallbackStateError(
                f"{type(cb).__name__}.get_state() must return a dict of JSON values (numbers, strings, "
                f"lists, dicts, None; numpy values are converted), got {type(state).__name__}: {exc}") from exc

    def set(self, cb, state: dict, slots) -> None:
        cb.set_state(state)


_PROTOCOL = _Protocol()


def _follows_protocol(cb) -> bool:
    return callable(getattr(cb, "get_state", None)) and callable(getattr(cb, "set_state", None))


def _adapter(cb) -> _Attributes | None:
    if _follows_protocol(cb):
        return _PROTOCOL
    return next((adapter for cls, adapter in KNOWN if isinstance(cb, cls)), None)


def _unkept_attributes(cb) -> list[str]:
    """Attributes that look like state: not the base class's, not named after a constructor
    argument (Keras's own convention for settings: ``self.patience = patience``)."""
    try:
        params = set(inspect.signature(type(cb).__init__).parameters)
    except (TypeError, ValueError):
        params = set()
    base = set(vars(keras.callbacks.Callback()))
    return sorted(k for k in vars(cb) if k not in base and k.lstrip("_") not in params)


def _check(cb) -> None:
    if isinstance(cb, keras.callbacks.BackupAndRestore):
        raise CallbackStateError(
            "callbacks() returned keras.callbacks.BackupAndRestore: the trainer already backs up and "
            "restores (every model, optimizer and callback variable, at any step), and BackupAndRestore "
            "would load its own older weights over the restored checkpoint at on_train_begin; remove it")


class CallbackStates:
    """The state of the job's callbacks, taken with every checkpoint and restored at start."""

    def __init__(self, callbacks: list, model: keras.Model):
        for cb in callbacks:
            _check(cb)
        self._saved: dict | None = None  # the restored checkpoint's; None: a new run
        self.entries = []  # (key, callback, adapter, slots)
        counts: dict[str, int] = {}
        for cb in callbacks:
            name = type(cb).__name__
            key = f"{name}-{counts.get(name, 0)}"
            counts[name] = counts.get(name, 0) + 1
            adapter = _adapter(cb)
            if adapter is None:
                unkept = _unkept_attributes(cb)
                if unkept:
                    log.warning("callback %s has instance state (%s) and no get_state()/set_state(): its state "
                                "restarts at each resume (see the README, \"Callbacks and their state\")",
                                name, ", ".join(unkept))
                continue
            self.entries.append((key, cb, adapter, adapter.slots(cb, model)))
        for key, cb, adapter, slots in self.entries:
            if adapter is _PROTOCOL:
                adapter.get(cb, slots)  # a state that cannot be saved stops the start, not the run

    @property
    def variables(self) -> dict:
        """The checkpoint variables of tensor state (the ``callbacks`` group), made before the restore."""
        return {f"{key}/{i}": slot for key, _, _, slots in self.entries for i, slot in enumerate(slots)}

    def capture(self) -> dict:
        """Every callback's state now (tensors are copied into their variables): with a save."""
        return {key: adapter.get(cb, slots) for key, cb, adapter, slots in self.entries}

    def resume_from(self, saved: dict) -> None:
        """The callbacks' state of the restored checkpoint, applied at ``train_begin``."""
        self._saved = saved

    def train_begin(self, callbacks: keras.callbacks.CallbackList, mid_epoch: bool) -> None:
        """``on_train_begin``, then the restored state (if any): Keras resets it in on_train_begin."""
        saved = self._saved
        resuming = saved is not None
        for _, cb, adapter, _ in self.entries:
            adapter.before_train_begin(cb, resuming)
        callbacks.on_train_begin()
        if not resuming:
            return
        for key, cb, adapter, slots in self.entries:
            if key in saved:
                adapter.set(cb, saved[key], slots)
                adapter.after_restore(cb, mid_epoch)
            else:
                log.warning("callback %s has no state in the restored checkpoint (added to the job since, "
                            "or an older checkpoint): it starts afresh", key)
