"""Unit tests of the seams that bound every wait for another worker: the start-up wait for
peers (a fake clock and fake ports) and the guard around calls that block inside TensorFlow
(real signals to this process, an injected exit)."""
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from trainer import errors
from trainer.cluster import peers
from trainer.config import TrainConfig
from trainer.steering.blocking import Guard
from trainer.steering.signals import StopRequest

ME = peers.Worker(1, "127.0.0.1:1")
CHIEF, THIRD = peers.Worker(0, "127.0.0.1:2"), peers.Worker(2, "10.0.0.3:3")


def test_the_default_peer_timeout_is_at_most_five_minutes():
    assert TrainConfig("runs/x").peer_timeout_seconds == 300.0


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def test_wait_for_peers_names_the_workers_that_never_came_and_the_wait():
    clock = FakeClock()
    came = {CHIEF.address}
    with pytest.raises(peers.PeerLost) as err:
        peers.wait_for_peers(ME, [CHIEF, THIRD], 30, lambda: None, clock, clock.sleep,
                             lambda address: address in came)
    assert err.value.exit_code == errors.PEER_LOST
    assert "worker 2 (10.0.0.3:3) never came: waited 30 s" in str(err.value)
    assert "worker 0" not in str(err.value)
    assert 30 <= clock.now < 30 + 2 * peers.PROBE_EVERY_S


def test_wait_for_peers_returns_once_every_peer_answers():
    clock = FakeClock()
    peers.wait_for_peers(ME, [CHIEF, THIRD], 30, lambda: None, clock, clock.sleep,
                         lambda address: address == CHIEF.address or clock.now >= 12)
    assert 12 <= clock.now < 13


def test_a_stop_signal_ends_the_wait_for_peers_at_once():
    clock = FakeClock()
    with pytest.raises(peers.StoppedWaiting) as err:
        peers.wait_for_peers(ME, [CHIEF], 300, lambda: signal.SIGTERM if clock.now >= 5 else None, clock,
                             clock.sleep, lambda address: False)
    assert err.value.signum == signal.SIGTERM and clock.now < 5 + 2 * peers.PROBE_EVERY_S


class Exits:
    def __init__(self):
        self.codes, self.lines = [], []

    def exit(self, code):
        self.codes.append(code)

    def write(self, line):
        self.lines.append(line)


def _signal_soon(signum, after_s=0.1):
    threading.Timer(after_s, os.kill, (os.getpid(), signum)).start()


def test_the_guard_exits_with_128_plus_the_signal_when_the_blocked_phase_does_not_end():
    exits = Exits()
    with StopRequest(abort=lambda signum: None), \
            Guard("restoring", bound_s=None, grace_s=0.3, exit=exits.exit, write=exits.write):
        _signal_soon(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while not exits.codes and time.monotonic() < deadline:
            time.sleep(0.05)  # (blocking calls that release the interpreter, as a collective does)
    assert exits.codes == [128 + signal.SIGTERM]
    assert "SIGTERM received while restoring" in exits.lines[0]


def test_a_phase_that_ends_within_the_grace_leaves_the_stop_to_the_usual_path():
    exits = Exits()
    with StopRequest(abort=lambda signum: None) as stop, Guard("restoring", grace_s=5, exit=exits.exit,
                                                               write=exits.write):
        _signal_soon(signal.SIGINT)
        time.sleep(0.5)
    assert exits.codes == [] and stop.signum == signal.SIGINT


def test_a_signal_that_leaves_time_does_not_end_the_phase_until_it_stops():
    """SLURM's warning near the job's end (``stops`` says no) leaves the phase to end by itself;
    asked again at every poll, it ends the phase once it stops (the end time turned out far)."""
    exits, leaves_time = Exits(), threading.Event()
    leaves_time.set()
    with StopRequest(abort=lambda signum: None) as stop, \
            Guard("restoring", grace_s=0.2, exit=exits.exit, write=exits.write,
                  stops=lambda signum: not leaves_time.is_set()):
        _signal_soon(signal.SIGUSR1)
        time.sleep(1.0)
        assert exits.codes == [] and stop.signum == signal.SIGUSR1
        leaves_time.clear()
        deadline = time.monotonic() + 5
        while not exits.codes and time.monotonic() < deadline:
            time.sleep(0.05)
    assert exits.codes == [128 + signal.SIGUSR1]


def test_the_guard_exits_for_a_requeue_once_its_bound_passes():
    exits = Exits()
    with Guard("choosing the checkpoint", bound_s=0.2, awaited="the chief (worker 0)", exit=exits.exit,
               write=exits.write):
        deadline = time.monotonic() + 5
        while not exits.codes and time.monotonic() < deadline:
            time.sleep(0.05)
    assert exits.codes == [errors.PEER_LOST]
    assert "the chief (worker 0) did not answer within 0.2 s while choosing the checkpoint" in exits.lines[0]


def test_a_collective_failing_in_the_job_s_build_is_a_lost_peer_only_with_several_workers():
    """Making a variable under MultiWorkerMirroredStrategy broadcasts it: a worker gone at that
    moment fails the job's build_model inside the collective. That is the job's exit for a
    requeue (run.py catches it), not a bad job (exit 2)."""
    import tensorflow as tf

    from trainer.building import _call
    from trainer.job import Job, JobError

    def build_model():
        raise tf.errors.UnavailableError(None, None, "Collective ops is aborted by: failed to connect")
    job = Job("my_job.py", build_model, lambda: None)
    with pytest.raises(tf.errors.UnavailableError):
        _call(job, "build_model", workers=2)
    with pytest.raises(JobError, match="build_model failed .UnavailableError"):
        _call(job, "build_model", workers=1)


WATCHED = """import ctypes, signal, sys
from trainer.steering.blocking import connect_watchdog
with connect_watchdog(float(sys.argv[1])):
    ctypes.PyDLL(None).sleep(int(sys.argv[2]))  # (PyDLL: the interpreter lock stays held, as in TF's connect)
libc = ctypes.CDLL(None)
libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_void_p)
print("returned; SIGABRT handler", libc.signal(signal.SIGABRT, None))
"""


@pytest.mark.parametrize("bound_s, sleep_s", [(1, 60), (30, 1)])
def test_a_wait_holding_the_interpreter_lock_ends_with_exit_6_at_the_connect_bound(bound_s, sleep_s):
    """A block that holds the lock past the bound ends the process (exit 6, one line, no Python
    code involved); one that returns in time leaves the process as it was (SIGABRT's default)."""
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", WATCHED, str(bound_s), str(sleep_s)], capture_output=True,
                          text=True, timeout=120)
    took = time.monotonic() - started
    if bound_s < sleep_s:
        assert done.returncode == errors.PEER_LOST and took < sleep_s, (done, took)
        assert "the workers did not finish connecting within 1 s" in done.stderr and not done.stdout, done
    else:
        assert done.returncode == 0 and done.stdout == "returned; SIGABRT handler None\n", done
        assert "connecting" not in done.stderr, done
