"""Which strategy the loop runs under, which replicas this process feeds, and how the
processes agree at step boundaries.

``--strategy auto`` (default) picks MultiWorkerMirroredStrategy when the
cluster has several workers (``TF_CONFIG``, or a SLURM job step with several
tasks), MirroredStrategy when this machine has several GPUs, else the default
strategy. With one process, agreeing is free: the process decides alone.
With several, each step also sums a small vector across the workers (fused
into the step's ``tf.function``; see :class:`CollectiveAgreement`).
"""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass, field

import tensorflow as tf

from .data import Replicas

log = logging.getLogger("trainer")

STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
_SIGNALS = 32  # one slot per signal number in the agreement vector


@dataclass
class Decisions:
    """What all processes do at a step boundary."""
    stop: int | None = None        # the signal to stop for
    save: bool = False             # a time-based save (the chief's clock decides)
    lr: float | None = None        # a live learning-rate change (the chief's request)
    requests: list = field(default_factory=list)  # the chief's request objects behind ``lr``


class Agreement:
    """One process: its own decisions are everyone's."""
    fused = False

    def local_flags(self, local: Decisions):
        return None

    def decide(self, local: Decisions, agreed) -> Decisions:
        return local

    def now(self, local: Decisions) -> Decisions:
        return local

    def share(self, value: float | None) -> float | None:
        return value


class CollectiveAgreement(Agreement):
    """Several workers: every step sums, across replicas, a vector of

    * one slot per signal number: 1 where this worker received that signal
      (the stop signal is the smallest number anyone received, so every
      worker exits with the same code),
    * the chief's "time-based save due",
    * the chief's requested learning rate (0 for none),

    where only replica 0 (on the chief) contributes the last two. It is one
    tiny all-reduce, issued inside the step's tf.function beside the gradient
    reduction. Reading it back makes each step wait for the previous one, as a
    multi-worker step does anyway for its gradients.
    """
    fused = True

    def __init__(self, strategy, is_chief: bool):
        self.strategy = strategy
        self.is_chief = is_chief
        self._size = _SIGNALS + 2
        self._share_fn = None

    def local_flags(self, local: Decisions) -> tf.Tensor:
        flags = [0.0] * self._size
        if local.stop:
            flags[int(local.stop) % _SIGNALS] = 1.0
        if self.is_chief:
            flags[_SIGNALS] = float(local.save)
            flags[_SIGNALS + 1] = float(local.lr or 0.0)
        return tf.constant(flags, tf.float32)

    def reduce_in_step(self, strategy, flags: tf.Tensor) -> tf.Tensor:
        def contribution(flags):
            ctx = tf.distribute.get_replica_context()
            first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
            mask = tf.concat([tf.ones([_SIGNALS]), tf.fill([2], first)], 0)
            return flags * mask
        return strategy.reduce("SUM", strategy.run(contribution, args=(flags,)), axis=None)

    def decide(self, local: Decisions, agreed) -> Decisions:
        values = agreed.numpy()
        stops = [i for i in range(1, _SIGNALS) if values[i] > 0]
        lr = float(values[_SIGNALS + 1]) or None
        return Decisions(stop=stops[0] if stops else None, save=values[_SIGNALS] > 0, lr=lr,
                         requests=local.requests if lr is not None else [])

    def now(self, local: Decisions) -> Decisions:
        """An agreement outside a step (at an epoch's end)."""
        if self._share_fn is None:
            strategy = self.strategy

            @tf.function
            def agree(flags):
                return self.reduce_in_step(strategy, flags)
            self._share_fn = agree
        return self.decide(local, self._share_fn(self.local_flags(local)))

    def share(self, value: float | None) -> float | None:
        """The chief's value (or None) on every worker."""
        return self.now(Decisions(lr=value if self.is_chief else None)).lr


@dataclass
class Cluster:
    strategy: tf.distribute.Strategy
    replicas: Replicas
    is_chief: bool
    workers: int
    index: int
    agreement: Agreement

    def describe(self) -> str:
        name = type(self.strategy).__name__
        if self.workers > 1:
            return (f"{name}: worker {self.index} of {self.workers}, "
                    f"{self.replicas.total} replicas in all")
        return f"{name} with {self.replicas.total} replica(s)"


def setup(kind: str = "auto") -> Cluster:
    """The strategy for ``kind`` (one of STRATEGIES) and this process's place in it."""
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {kind!r}")
    if kind == "auto":
        kind = "default"
        if len(tf.config.list_physical_devices("GPU")) > 1:
            kind = "mirrored"
    if kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy()
    else:
        strategy = tf.distribute.get_strategy()
    replicas = Replicas(total=strategy.num_replicas_in_sync, first=0, local=strategy.num_replicas_in_sync)
    return Cluster(strategy, replicas, True, 1, 0, Agreement())


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
