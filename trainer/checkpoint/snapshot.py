"""The TensorFlow side of a checkpoint: the shadow copy a save takes of the variables, writing
that copy with tf.train.CheckpointManager, and restoring a checkpoint into the live variables.

A save only copies the variables into a shadow set (one graph call), so the training loop
is blocked for the copy and not for the write, which a background thread does from the
shadow set. Under tf.distribute a restore must also give each replica back its own value
of the variables whose replicas differ (metrics' totals, moving statistics), which
tf.distribute alone saves as one value.
"""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from .errors import CorruptCheckpoint, IncompatibleCheckpoint
from .index import STATE_FILE

HOST = "/device:CPU:0"
REPLICA_PARTS = "replica_parts"  # a checkpoint group: each replica's own value of the variables below
OPTIONAL_GROUPS = ("data", "callbacks")  # groups an older checkpoint may lack: their variables start afresh


def checkpoint_key(group: str, var_path: str) -> str:
    """The key tf.train.Checkpoint gives a variable stored as ``{group: {var_path: var}}``."""
    escaped = var_path.replace(".", "..").replace("/", ".S")
    return f"{group}/{escaped}/.ATTRIBUTES/VARIABLE_VALUE"


def state_file_readable(directory: str) -> bool:
    """TF can parse ``directory``'s ``checkpoint`` state file (or there is none); TF returns
    None on parse errors, and a CheckpointManager opened on such a folder would fail."""
    if not os.path.exists(os.path.join(directory, STATE_FILE)):
        return True
    return tf.train.get_checkpoint_state(directory) is not None


class Snapshot:
    """The live variables of a run (``{group: {path: variable}}``), their shadow copy, and
    the checkpoints they are written to and restored from.

    The shadow copy lives in host memory unless ``on_device``. ``holds_replica_zero``: this
    process holds the first replica (it takes a summed total's whole on a restore that
    cannot give each replica its own part)."""

    def __init__(self, groups: dict[str, dict], on_device: bool = False, holds_replica_zero: bool = True):
        self.checkpoint = tf.train.Checkpoint(**groups)  # restores into the live variables
        self.expected_shapes = {checkpoint_key(g, p): tuple(v.shape)
                                for g, vs in groups.items() for p, v in vs.items()}
        self._apart = [(checkpoint_key(g, p), _value(v)) for g, vs in groups.items() for p, v in vs.items()
                       if _kept_apart(_value(v))]
        self._holds_replica_zero = holds_replica_zero
        parts = _replica_parts(self._apart)
        saved = {**groups, REPLICA_PARTS: parts} if parts else groups
        self._shadow = {g: {p: _shadow(v, on_device) for p, v in vs.items()} for g, vs in saved.items()}
        pairs = [(self._shadow[g][p], _value(v)) for g, vs in saved.items() for p, v in vs.items()]
        self.variables = [copy for copy, _ in pairs]  # where a save's copy lives

        @tf.function(autograph=False)  # (plain Python: nothing for AutoGraph to convert, at each start)
        def take():  # one graph call instead of hundreds of eager assigns
            for copy, live in pairs:
                copy.assign(live)
        self.take = take

    def manager(self, directory: str) -> tf.train.CheckpointManager:
        """Writes the shadow copy to ``directory`` (numbers chosen by the caller, nothing pruned:
        pruning follows the commit markers, which TF does not know)."""
        return tf.train.CheckpointManager(tf.train.Checkpoint(**self._shadow), directory,
                                          max_to_keep=None, checkpoint_name="ckpt")

    def restore(self, prefix: str) -> None:
        """Restore the checkpoint at ``prefix`` into the live variables (collective under
        MultiWorkerMirroredStrategy: every worker calls it)."""
        self.checkpoint.restore(prefix).expect_partial()
        self._restore_parts(prefix)

    def _restore_parts(self, prefix: str) -> None:
        """Give each replica back its own value of the variables kept apart, so that a resumed
        run's replicas go on exactly as the uninterrupted run's: a resumed epoch adds up its
        metrics in the same order, each replica evaluates with its own moving statistics.
        tf.distribute restores the saved value on every replica (a sum divided by the replica
        count). Where the parts were saved with another replica count, or live in other
        processes, a sum goes whole to replica 0 (the total is kept, not its last bits) and
        the rest is left as tf.distribute restored it."""
        if not self._apart:
            return
        reader = tf.train.load_checkpoint(prefix)
        for key, var in self._apart:
            parts = [checkpoint_key(REPLICA_PARTS, _part(key, r)) for r in range(len(var.values) + 1)]
            if all(reader.has_tensor(k) for k in parts[:-1]) and not reader.has_tensor(parts[-1]):
                values = [reader.get_tensor(k) for k in parts[:-1]]
            elif _summed(var):
                total = reader.get_tensor(key)
                values = [total if i == 0 and self._holds_replica_zero else np.zeros_like(total)
                          for i in range(len(var.values))]
            else:
                continue
            for component, value in zip(var.values, values):
                component.assign(value)

    def check_compatible(self, prefix: str, name: str) -> None:
        """IncompatibleCheckpoint when the checkpoint at ``prefix`` (``name``: how to call it in
        the message) holds another model, so that a restore is never partial."""
        try:
            stored = dict(tf.train.list_variables(prefix))
        except (tf.errors.OpError, ValueError) as exc:
            raise CorruptCheckpoint(f"its index cannot be read ({str(exc).splitlines()[0][:160]})") from exc
        missing = [k for k in self.expected_shapes if k not in stored and k.split("/")[0] not in OPTIONAL_GROUPS]
        wrong = [k for k, shape in self.expected_shapes.items()
                 if k in stored and tuple(stored[k]) != tuple(shape)]
        extra = [k for k in stored if k.startswith("model/") and k not in self.expected_shapes]
        if missing or wrong or extra:
            detail = "; ".join(f"{label}: {', '.join(_short(k) for k in keys[:3])}"
                               + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
                               for label, keys in (("missing", missing), ("different shape", wrong),
                                                   ("unexpected", extra)) if keys)
            raise IncompatibleCheckpoint(
                f"checkpoint {name} was written by a different model ({detail}); nothing was restored. "
                "Use the architecture flags of that run, another --run-dir, or --fresh to archive it and "
                "start over")


def _value(var):
    """The tf.Variable behind a Keras variable (or the variable itself)."""
    return getattr(var, "value", var) if not isinstance(var, tf.Variable) else var


def _shadow(var, on_device: bool) -> tf.Variable:
    """A plain variable to copy ``var`` into (made without reading ``var``: under
    MultiWorkerMirroredStrategy reading a metric's total is a collective). In host memory
    unless ``on_device``: on a GPU, a copy beside the variables would take as much
    accelerator memory again as the model and optimizer state."""
    dtype = tf.as_dtype(var.dtype)
    with tf.device(_primary_device(var) if on_device else HOST):
        initial = "" if dtype == tf.string else tf.zeros(var.shape, dtype)
        return tf.Variable(initial, trainable=False, dtype=dtype)


def _part(key: str, replica: int) -> str:
    return f"{key}#{replica}"


def _kept_apart(var) -> bool:
    """A variable whose replicas hold different values: a metric's running total (summed on
    read), or a non-trainable variable each replica updates alone (BatchNormalization's moving
    statistics). tf.distribute checkpoints one value for it, the sum or the first replica's."""
    if not isinstance(var, tf.distribute.DistributedValues):
        return False
    if getattr(var, "synchronization", None) == tf.VariableSynchronization.ON_READ:
        return True
    return not var.trainable and getattr(var, "aggregation", None) == tf.VariableAggregation.NONE


def _summed(var) -> bool:
    return getattr(var, "aggregation", None) == tf.VariableAggregation.SUM


def _replica_parts(apart) -> dict:
    """Each replica's own value of the variables kept apart, when this process holds every
    replica (one process, MirroredStrategy); saved beside what tf.distribute saves."""
    return {_part(key, r): component for key, var in apart
            if len(var.values) == var.distribute_strategy.num_replicas_in_sync
            for r, component in enumerate(var.values)}


def _primary_device(var) -> str:
    """Where ``var`` (its first replica's copy, for a mirrored one) lives."""
    value = _value(var)
    primary = getattr(value, "primary", value)
    return primary.device


def _short(key: str) -> str:
    return key.split("/")[1].replace(".S", "/").replace("..", ".") if "/" in key else key
