"""How long the workers of a multi-worker job wait for each other.

One bound, ``--peer-timeout-seconds`` (default 300 s, ``TrainConfig.peer_timeout_seconds``),
for every wait for a peer that never came; one that stopped answering is noticed
sooner, by heartbeats (:func:`frozen_bound_s`). Either way a worker exits with
the lost-worker code (6), which ``slurm/train.sh`` and the launcher requeue.
Where the waits are:

* At start-up, :func:`wait_for_peers`: each worker listens on its own port and
  connects to every other's until all answer. It runs in Python, so it sees a
  stop signal at once, and it knows who is missing, so it can say so.
  TensorFlow's own connection (inside ``MultiWorkerMirroredStrategy``) holds
  the interpreter lock while it waits: no Python code, not even a signal
  handler, runs until it returns, so it is entered only once every peer
  answered.
* Inside TensorFlow, :func:`configure_coordination`: the coordination service
  gives up on a peer that does not register within the bound (one that died
  between the two waits), and its heartbeats end every pending collective with
  an error when a peer stops answering (dead or frozen), which ``train`` turns
  into exit 6.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import PEER_LOST, TrainerError

log = logging.getLogger("trainer")

HEARTBEAT_S = 10.0  # TensorFlow's heartbeat timeout here (at most the bound): a frozen peer is lost after
FROZEN_HEARTBEATS = 3  # at most this many heartbeat timeouts (the coordination service's checks, and the RPC's)
PROBE_EVERY_S = 0.25
REPORT_EVERY_S = 30.0  # a line while start-up waits, so that a log shows who is awaited


class PeerLost(TrainerError, exit_code=PEER_LOST):
    """Another worker never came or stopped answering (exit code 6: requeue)."""


class StoppedWaiting(Exception):
    """A stop signal arrived while this worker waited for its peers."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


@dataclass(frozen=True)
class Worker:
    index: int    # as in Cluster.index: the chief is 0
    address: str  # host:port

    def __str__(self) -> str:
        return f"worker {self.index} ({self.address})"


def workers_of(spec: dict) -> list[Worker]:
    """Every worker of a cluster spec (``{"chief": [...], "worker": [...]}``), the chief first."""
    hosts = list(spec.get("chief", [])) + list(spec.get("worker", []))
    return [Worker(i, address) for i, address in enumerate(hosts)]


def wait_for_peers(me: Worker, others: list[Worker], bound_s: float, stopped: Callable[[], int | None],
                   clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                   reachable: Callable[[str], bool] | None = None) -> None:
    """Return once every worker of ``others`` answers on its port; raise :class:`StoppedWaiting`
    as soon as ``stopped()`` names a signal, :class:`PeerLost` naming the missing ones once
    ``bound_s`` has passed. Meanwhile this worker listens on its own port, so that the others
    see it (TensorFlow's server takes the port over once this returns)."""
    reachable = reachable or _answers
    started = reported = clock()
    with _listening(me.address):
        missing = [w for w in others if not reachable(w.address)]
        if missing:
            log.info("%s: waiting up to %g s for %s", me, bound_s, _names(missing))
        while missing:
            signum = stopped()
            if signum:
                raise StoppedWaiting(signum)
            waited = clock() - started
            if waited >= bound_s:
                raise PeerLost(f"{_names(missing)} never came: waited {waited:.0f} s for "
                               f"{'it' if len(missing) == 1 else 'them'} (--peer-timeout-seconds {bound_s:g}). "
                               "This worker stops; restart the job (SLURM requeues it) once every node can start")
            if clock() - reported >= REPORT_EVERY_S:
                reported = clock()
                log.info("waiting for %s (%.0f s of at most %g s)", _names(missing), waited, bound_s)
            sleep(PROBE_EVERY_S)
            missing = [w for w in missing if not reachable(w.address)]


def _names(workers: list[Worker]) -> str:
    return ", ".join(str(w) for w in workers)


def _split(address: str) -> tuple[str, int]:
    host, port = address.rsplit(":", 1)
    return host.strip("[]"), int(port)


def _answers(address: str) -> bool:
    try:
        with socket.create_connection(_split(address), timeout=1.0):
            return True
    except OSError:
        return False


class _listening:
    """This worker's port, listened on (connections are never accepted: a completed
    handshake is the answer) until the wait ends."""

    def __init__(self, address: str):
        self.port = _split(address)[1]
        self.sock: socket.socket | None = None

    def __enter__(self):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", self.port))
            sock.listen(128)
            self.sock = sock
        except OSError as exc:  # TensorFlow's server will report a port in use; peers see it once it listens
            sock.close()
            log.warning("cannot listen on port %d while waiting for the other workers (%s)", self.port, exc)
        return self

    def __exit__(self, *exc):
        if self.sock is not None:
            self.sock.close()


def frozen_bound_s(bound_s: float) -> float:
    """How long the others take, at most, to notice a peer that froze (or whose node hung)."""
    return FROZEN_HEARTBEATS * min(bound_s, HEARTBEAT_S)


def configure_coordination(cluster_spec, bound_s: float) -> None:
    """TensorFlow's coordination service with the bound: a peer that does not register within
    ``bound_s`` ends the connection with an error, and one that misses heartbeats for
    ``min(bound_s, HEARTBEAT_S)`` is lost. The settings MultiWorkerMirroredStrategy would
    choose, otherwise: it keeps a coordination service configured before it."""
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.eager import context

    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, cluster_register_timeout_in_ms=int(bound_s * 1000),
        heartbeat_timeout_in_ms=int(min(bound_s, HEARTBEAT_S) * 1000))
