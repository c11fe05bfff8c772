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

import contextlib
import json
import logging
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from ..config import DEFAULT_PEER_TIMEOUT_SECONDS, NOTICE_SOURCES, STRATEGIES
from ..data.sources import Replicas
from ..errors import BAD_INPUT, TrainerError
from . import peers

log = logging.getLogger("trainer")

_SIGNALS = 32  # one slot per signal number in the agreement vector
_CHIEFS = 3    # then the chief's: time-based save due, learning rate, save seconds
_NOTICES = _SIGNALS + _CHIEFS  # then "notice save", then one slot per notice source
AGREE_EVERY_STEPS = 8
PEER_ERRORS = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
               tf.errors.CancelledError)  # what a collective raises when another worker is gone


@dataclass
class Decisions:
    """What all processes do at a step boundary."""
    stop: int | None = None        # the signal to stop for
    save: bool = False             # a time-based save (the chief's clock decides)
    lr: float | None = None        # a live learning-rate change (the chief's request)
    requests: list = field(default_factory=list)  # the chief's request objects behind ``lr``
    notice_save: bool = False      # a preemption notice: commit a checkpoint now and keep training
    sources: tuple = ()            # the notices behind ``stop`` or ``notice_save`` (NOTICE_SOURCES)
    save_seconds: float = 0.0      # how long the chief's saves take (a stop must leave room for one)


class Agreement:
    """One process: its own decisions are everyone's, at every step."""
    fused = False
    every = 1

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
    * the chief's measured save time (a stop before a deadline leaves room for it),
    * "a preemption notice asks for a save now", and one slot per notice source,

    where only replica 0 (on the chief) contributes the three chief's values. A
    deadline itself is not agreed: each worker stops (the signal slots) once its
    own earliest deadline leaves no room to reach the next agreement, a step and a
    save, so all stop at the same step, before the earliest deadline any has. It is one
    tiny all-reduce, issued inside the execution's tf.function beside the
    gradient reduction, in every execution that passes a multiple of
    ``every`` (8) global steps: with one step per execution, every 8th step (a
    stop, a time-based save or a live learning-rate change waits at most 7 more
    steps); with N steps per execution, at execution boundaries only, the same
    ones on every worker (every execution when N >= 8). One agreement
    takes about 2.1 ms between two workers on one 2-CPU machine: every step
    would cost 1.3% of the small preset's 170 ms step, every 8th costs 0.16%
    (measured, bench/multiworker.py).
    """
    fused = True
    every = AGREE_EVERY_STEPS

    def __init__(self, strategy, is_chief: bool):
        self.strategy = strategy
        self.is_chief = is_chief
        self._size = _NOTICES + 1 + len(NOTICE_SOURCES)
        self._share_fn = None

    def local_flags(self, local: Decisions) -> tf.Tensor:
        flags = [0.0] * self._size
        if local.stop:
            flags[int(local.stop) % _SIGNALS] = 1.0
        if self.is_chief:
            flags[_SIGNALS:_NOTICES] = [float(local.save), float(local.lr or 0.0), float(local.save_seconds)]
        flags[_NOTICES] = float(local.notice_save)
        for source in local.sources:
            flags[_NOTICES + 1 + NOTICE_SOURCES.index(source)] = 1.0
        return tf.constant(flags, tf.float32)

    def reduce_in_step(self, strategy, flags: tf.Tensor) -> tf.Tensor:
        def contribution(flags):
            ctx = tf.distribute.get_replica_context()
            first = tf.cast(tf.equal(ctx.replica_id_in_sync_group, 0), tf.float32)
            mask = tf.concat([tf.ones([_SIGNALS]), tf.fill([_CHIEFS], first), tf.ones([self._size - _NOTICES])], 0)
            return flags * mask
        return strategy.reduce("SUM", strategy.run(contribution, args=(flags,)), axis=None)

    def decide(self, local: Decisions, agreed) -> Decisions:
        values = agreed.numpy()
        stops = [i for i in range(1, _SIGNALS) if values[i] > 0]
        lr = float(values[_SIGNALS + 1]) or None
        sources = tuple(s for i, s in enumerate(NOTICE_SOURCES) if values[_NOTICES + 1 + i] > 0)
        return Decisions(stop=stops[0] if stops else None, save=values[_SIGNALS] > 0, lr=lr,
                         requests=local.requests if lr is not None else [], notice_save=values[_NOTICES] > 0,
                         sources=sources, save_seconds=float(values[_SIGNALS + 2]))

    def now(self, local: Decisions) -> Decisions:
        """An agreement outside a step (at an epoch's end)."""
        return self.decide(local, self.now_flags(self.local_flags(local)))

    def now_flags(self, flags: tf.Tensor) -> tf.Tensor:
        """The summed vector, outside a step."""
        if self._share_fn is None:
            strategy = self.strategy

            @tf.function(autograph=False)  # (no control flow: spare each start AutoGraph's conversion)
            def agree(flags):
                return self.reduce_in_step(strategy, flags)
            self._share_fn = agree
        return self._share_fn(flags)

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
    _gather: BytesGather | None = field(default=None, repr=False)

    def describe(self) -> str:
        """The strategy in words: "1 CPU", "MirroredStrategy over 2 GPUs",
        "MultiWorkerMirroredStrategy, 4 workers × 2 GPUs" (the devices of this worker)."""
        here, name = devices_in_words(self.strategy), type(self.strategy).__name__
        if self.workers > 1:
            return f"{name}, {self.workers} workers × {here}"
        if isinstance(self.strategy, tf.distribute.MirroredStrategy):
            return f"{name} over {here}"
        return here

    def gather(self, data: bytes) -> list[bytes]:
        """Every worker's ``data``, in worker order, on every worker (a collective: all call it)."""
        if self.workers == 1:
            return [data]
        if self._gather is None:
            self._gather = BytesGather(self.strategy, self.replicas.first)
        return self._gather(data)

    def role(self) -> str:
        duty = "chief: writes the run dir" if self.is_chief else "reads the chief's checkpoints"
        return f"worker {self.index} of {self.workers} ({duty}), {self.replicas.local} replica(s) here"


class BytesGather:
    """All-gathers a byte string of any length from every worker: the lengths first (the
    collective needs one shape), then the bytes padded to the longest, as int32 words;
    each worker's first replica carries its bytes, the others none."""

    def __init__(self, strategy, first_replica: int):
        self.strategy, self.first = strategy, first_replica

        def gathered(value):
            return strategy.run(lambda v: tf.distribute.get_replica_context().all_gather(v[None], 0), args=(value,))
        self._gathered = tf.function(gathered, reduce_retracing=True, autograph=False)

    def _per_replica(self, value, nothing):
        first = self.first
        return self.strategy.experimental_distribute_values_from_function(
            lambda ctx: value if ctx.replica_id_in_sync_group == first else nothing)

    def _all(self, mine, others) -> np.ndarray:
        gathered = self._gathered(self._per_replica(mine, others))
        return self.strategy.experimental_local_results(gathered)[0].numpy()

    def __call__(self, data: bytes) -> list[bytes]:
        lengths = self._all(tf.constant(len(data), tf.int32), tf.constant(-1, tf.int32))
        size = -(-int(lengths.max()) // 4)
        padded = np.frombuffer(data + b"\0" * (4 * size - len(data)), np.int32)
        words = self._all(tf.constant(padded), tf.zeros([size], tf.int32))
        return [row.tobytes()[:n] for row, n in zip(words, lengths) if n >= 0]


def devices_in_words(strategy) -> str:
    """This process's devices of ``strategy``: "1 CPU", "2 GPUs", "3 CPU devices" (a CPU split
    by --cpu-devices)."""
    try:
        names = strategy.extended.worker_devices
    except RuntimeError:  # the default strategy: TensorFlow's default device
        names = ["GPU"] if tf.config.list_logical_devices("GPU") else ["CPU"]
    counts: dict[str, int] = {}
    for name in names:
        kind = next((k for k in ("GPU", "TPU", "CPU") if k in name.upper()), "device")
        counts[kind] = counts.get(kind, 0) + 1
    words = {"CPU": ("CPU", "CPU devices")}
    return " + ".join(f"{n} {words.get(kind, (kind, kind + 's'))[n > 1]}" for kind, n in counts.items())


PORTS_PER_JOB = 8  # a SLURM job's workers on one node listen on port_base .. port_base + 7


class ClusterError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """No usable cluster for ``--strategy multi-worker`` (exit code 2)."""


def slurm_port_base(env) -> int:
    """Ports from the job id, so that two jobs sharing a node do not collide (``TRAINER_PORT_BASE``
    overrides): 20000 + 8 * (job id mod 4000)."""
    if env.get("TRAINER_PORT_BASE"):
        return int(env["TRAINER_PORT_BASE"])
    return 20000 + PORTS_PER_JOB * (int(env.get("SLURM_JOB_ID", "0")) % 4000)


def find_cluster(env=None):
    """A cluster resolver when this process is one of several workers, else None.

    ``TF_CONFIG`` with more than one worker, or a SLURM job step (``srun``) with
    several tasks (``SLURM_STEP_NUM_TASKS``)."""
    env = os.environ if env is None else env
    if env.get("TF_CONFIG"):
        try:
            config = json.loads(env["TF_CONFIG"])
        except ValueError as exc:
            raise ClusterError(f"$TF_CONFIG is not valid JSON ({exc})") from None
        if sum(len(v) for k, v in config.get("cluster", {}).items() if k in ("worker", "chief")) > 1:
            return tf.distribute.cluster_resolver.TFConfigClusterResolver()
        return None
    if int(env.get("SLURM_STEP_NUM_TASKS") or 1) > 1 and "SLURM_PROCID" in env:
        from tensorflow.python.distribute.cluster_resolver.slurm_cluster_resolver import (
            expand_tasks_per_node,
        )
        resolver_cls = tf.distribute.cluster_resolver.SlurmClusterResolver
        if shutil.which("nvidia-smi"):  # one GPU set per task, CUDA_VISIBLE_DEVICES set by the resolver
            resolver = resolver_cls(port_base=slurm_port_base(env))
            return _at_node_addresses(resolver, resolver.num_accelerators())
        # CPU nodes: the resolver pairs ports with GPU slots, so give it one nominal slot per task
        per_node = max(expand_tasks_per_node(env["SLURM_STEP_TASKS_PER_NODE"]))
        resolver = resolver_cls(port_base=slurm_port_base(env), gpus_per_node=per_node, gpus_per_task=1,
                                auto_set_gpu=False)
        return _at_node_addresses(resolver, {})
    return None


def _at_node_addresses(resolver, accelerators: dict):
    """The resolver's cluster with each node's NodeAddr (``scontrol show node``) instead of its
    name: the address SLURM itself uses to reach the node."""
    spec = resolver.cluster_spec().as_dict()
    addresses = {}
    for task_type, hosts in spec.items():
        for i, host_port in enumerate(hosts):
            host, port = host_port.rsplit(":", 1)
            if host not in addresses:
                addresses[host] = _node_addr(host)
            hosts[i] = f"{addresses[host]}:{port}"
    return tf.distribute.cluster_resolver.SimpleClusterResolver(
        tf.train.ClusterSpec(spec), task_type=resolver.task_type, task_id=resolver.task_id, rpc_layer="grpc",
        num_accelerators=accelerators)


def _node_addr(node: str) -> str:
    try:
        out = subprocess.run(["scontrol", "show", "node", node], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return node
    match = re.search(r"NodeAddr=(\S+)", out)
    return match.group(1) if match else node


def setup(kind: str = "auto", cpu_devices: int | None = None,
          peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_SECONDS, stopped=lambda: None,
          connecting=contextlib.nullcontext) -> Cluster:
    """The strategy for ``kind`` (one of STRATEGIES) and this process's place in it. Call it
    before any other TensorFlow op: MultiWorkerMirroredStrategy configures the runtime, and so
    does splitting the CPU into ``cpu_devices`` logical devices (MirroredStrategy over them).

    Several workers wait for each other at most ``peer_timeout_s`` (:mod:`.peers`), and stop
    waiting as soon as ``stopped()`` names a signal; TensorFlow's connection runs inside
    ``connecting()``, a context manager (it holds the interpreter lock while it waits)."""
    if kind not in STRATEGIES:
        raise ValueError(f"--strategy: expected one of {', '.join(STRATEGIES)}, got {kind!r}")
    resolver = find_cluster() if kind in ("auto", "multi-worker") else None
    if kind == "multi-worker" and resolver is None:
        raise ClusterError("--strategy multi-worker: no cluster found; set TF_CONFIG for each worker, or "
                           "start the workers with srun (sbatch --ntasks=N slurm/train.sh does)")
    if resolver is not None:
        if cpu_devices:
            raise ClusterError("--cpu-devices: splits the CPU of one process; this process is one worker of "
                               "several (TF_CONFIG or srun): drop --cpu-devices, or start one process")
        return _multi_worker(resolver, peer_timeout_s, stopped, connecting)
    devices = split_cpu(cpu_devices) if cpu_devices else None
    if kind == "auto":
        kind = "mirrored" if devices and len(devices) > 1 or len(tf.config.list_physical_devices("GPU")) > 1 \
            else "default"
    strategy = tf.distribute.MirroredStrategy(devices) if kind == "mirrored" else tf.distribute.get_strategy()
    replicas = Replicas(total=strategy.num_replicas_in_sync, first=0, local=strategy.num_replicas_in_sync)
    return Cluster(strategy, replicas, True, 1, 0, Agreement())


def split_cpu(count: int) -> list[str]:
    """Make the first CPU ``count`` logical devices (how TensorFlow tests its strategies without
    GPUs); their names. Only possible before the runtime starts, unless already split so."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:  # the runtime has started: fine if it is already split this way
        if len(tf.config.list_logical_devices("CPU")) != count:
            raise ClusterError(f"--cpu-devices {count}: TensorFlow has already started in this process with "
                               f"{len(tf.config.list_logical_devices('CPU'))} CPU device(s), and the split can "
                               "only be set before its first operation; start a new process (a notebook: "
                               "restart the kernel and call trainer.fit first)") from None
    return [d.name for d in tf.config.list_logical_devices("CPU")]


def _multi_worker(resolver, peer_timeout_s: float, stopped, connecting) -> Cluster:
    spec = resolver.cluster_spec().as_dict()
    everyone = peers.workers_of(spec)
    index = resolver.task_id if resolver.task_type != "chief" else 0
    if resolver.task_type == "worker" and "chief" in spec:
        index += 1
    others = [w for w in everyone if w.index != index]
    peers.wait_for_peers(everyone[index], others, peer_timeout_s, stopped)
    peers.configure_coordination(resolver.cluster_spec(), peer_timeout_s)
    try:
        with connecting():
            strategy = tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver)
    except PEER_ERRORS as exc:
        raise peers.PeerLost(f"could not connect to {', '.join(map(str, others))} within {peer_timeout_s:g} s "
                             f"(--peer-timeout-seconds): a worker stopped while the job connected "
                             f"({type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}). This worker "
                             "stops; restart the job (SLURM requeues it)") from None
    workers = len(everyone)
    local = len(strategy.extended.worker_devices)
    is_chief = index == 0
    replicas = Replicas(total=strategy.num_replicas_in_sync, first=index * local, local=local)
    return Cluster(strategy, replicas, is_chief, workers, index, CollectiveAgreement(strategy, is_chief))


def signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"
