"""Stop signals, and bounds, for calls that block inside TensorFlow where the stop flag is not seen.

:class:`~trainer.steering.signals.StopRequest`'s handlers only record a
signal; the main thread acts on it at its next step boundary. A call that
waits inside TensorFlow for another worker never gets there, and Python runs
a signal's handler only once the main thread is back in the interpreter:

* :func:`held_during_connect`: TensorFlow's connection to the cluster also
  holds the interpreter lock (no Python code runs at all) and installs a
  SIGTERM handler of its own. The stop signals are blocked around it, so that
  one sent meanwhile stays pending; once it returns the handlers are
  reclaimed and the signals unblocked, and the pending one is recorded as usual.
  It is bounded by :func:`connect_watchdog`: a peer lost after it registered
  with TensorFlow's coordination service but before the devices were exchanged
  leaves that exchange waiting for an hour, and no thread of ours can run.
* :class:`Guard`: a thread armed around a named phase that waits in a
  collective (which lets Python threads run). It learns of a signal through
  the interpreter's wakeup file descriptor; if the phase has not ended
  ``grace_s`` later, it writes one line and exits with 128 + the signal's
  number (a second signal: at once). With a bound, it also exits with the
  lost-worker code once the phase has waited that long. Nothing is left to
  save in these phases (nothing trained yet, or this worker's part of the end done).
  A signal its caller says leaves time (SLURM's warning near the job's end
  time) does not end the phase: the loop trains in that time.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Self

from ..errors import PEER_LOST, interrupted
from .signals import CAUGHT, StopRequest

GRACE_S = 3.0  # a signalled phase that ends this soon stops the usual way, at the same place on every worker
POLL_S = 0.5


@contextlib.contextmanager
def held_during_connect(stop: StopRequest, bound_s: float, signals=CAUGHT) -> Iterator[None]:
    """Keep stop signals pending while TensorFlow connects (threads it starts meanwhile inherit
    the mask), then take the handlers back and let a pending signal through; at most
    ``bound_s`` and a few seconds (:func:`connect_watchdog`)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, signals)
    try:
        with connect_watchdog(bound_s + CONNECT_SLACK_S):
            yield
    finally:
        stop.reclaim()
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


CONNECT_SLACK_S = 5.0  # beyond the bound TensorFlow's own registration wait has
# The watchdog: a process of its own, since the waiting one runs no Python code. It exits quietly
# once its stdin closes (the connection returned), else writes the line and sends SIGABRT.
_WATCHDOG = """import os, select, signal, sys
parent, bound_s, line = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
if not select.select([0], [], [], bound_s)[0]:
    os.write(2, line.encode())
    os.kill(parent, signal.SIGABRT)
"""
assert signal.SIGABRT == PEER_LOST  # (SIGABRT's handler below exits with the signal's number)


@contextlib.contextmanager
def connect_watchdog(bound_s: float) -> Iterator[None]:
    """End this process with the lost-worker code (6) and one line if the block outlasts ``bound_s``.

    For a wait inside TensorFlow that holds the interpreter lock: no Python code runs, not a
    thread, not a signal handler. So a watchdog process sends SIGABRT, whose handler meanwhile is
    libc's ``_exit`` itself (async-signal-safe, called with the signal's number, 6): the kernel
    runs it whatever the interpreter does. The previous handler is back once the block ends."""
    libc = ctypes.CDLL(None)
    libc.signal.restype, libc.signal.argtypes = ctypes.c_void_p, (ctypes.c_int, ctypes.c_void_p)
    previous = libc.signal(signal.SIGABRT, ctypes.cast(libc._exit, ctypes.c_void_p).value)
    line = _line(f"ERROR the workers did not finish connecting within {bound_s:g} s (--peer-timeout-seconds and "
                 "a few seconds): a worker stopped while TensorFlow connected them, and TensorFlow would wait "
                 "for it for an hour. This worker stops (exit 6); restart the job (SLURM requeues it)")
    watchdog = subprocess.Popen([sys.executable, "-I", "-S", "-c", _WATCHDOG, str(os.getpid()), str(bound_s),
                                 line], stdin=subprocess.PIPE)
    try:
        yield
    finally:
        watchdog.stdin.close()
        watchdog.wait()
        libc.signal(signal.SIGABRT, previous)


def _line(text: str) -> str:
    """One line of this module's, as the process's own stderr gets it (the watchdog's too)."""
    return f"\n[trainer] {text}\n"


def _write(line: str) -> None:
    os.write(2, _line(line).encode())


class Guard:
    """Ends the process during ``phase`` (e.g. "waiting for the chief to choose the checkpoint")
    on a stop signal, or with exit code 6 once ``bound_s`` (if given) has passed, naming
    ``awaited``. Arm it from the main thread: ``with Guard(...): blocking_call()``."""

    def __init__(self, phase: str, bound_s: float | None = None, awaited: str = "the other workers",
                 grace_s: float = GRACE_S, exit: Callable[[int], None] = os._exit,
                 write: Callable[[str], None] = _write, clock: Callable[[], float] = time.monotonic,
                 stops: Callable[[int], bool] = lambda signum: True):
        self.phase, self.bound_s, self.awaited, self.grace_s = phase, bound_s, awaited, grace_s
        self._stops = stops  # (whether a signal ends the phase: a notice with time to spare does not)
        self._exit, self._write, self._clock = exit, write, clock
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._fds: tuple[int, int] | None = None
        self._previous_fd = -1

    def __enter__(self) -> Self:
        read, write = os.pipe()
        os.set_blocking(write, False)  # (the interpreter's signal handler writes to it)
        self._fds = read, write
        self._previous_fd = signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._thread = threading.Thread(target=self._watch, name=f"guard: {self.phase}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        signal.set_wakeup_fd(self._previous_fd)
        self._thread.join()
        for fd in self._fds:
            os.close(fd)

    def _watch(self) -> None:
        deadline = self._clock() + self.bound_s if self.bound_s is not None else None
        received = None  # (a signal that did not stop the phase may yet: asked again at every poll)
        while not self._done.is_set():
            received = self._next_signal(POLL_S) or received
            if received is not None and self._stops(received):
                self._signalled(received)
                return
            if deadline is not None and self._clock() >= deadline:
                self._write(f"ERROR {self.awaited} did not answer within {self.bound_s:g} s while {self.phase} "
                            "(--peer-timeout-seconds): this worker stops. The committed checkpoints are intact: "
                            "restart the job (SLURM requeues it) to resume from the newest")
                self._exit(PEER_LOST)
                return

    def _next_signal(self, timeout: float) -> int | None:
        ready, _, _ = select.select([self._fds[0]], [], [], timeout)
        if not ready:
            return None
        data = os.read(self._fds[0], 64)
        return data[0] if data else None

    def _signalled(self, signum: int) -> None:
        """The phase may still end by itself within the grace (then the usual stop follows)."""
        deadline = self._clock() + self.grace_s
        while not self._done.is_set():
            left = deadline - self._clock()
            if left <= 0 or self._next_signal(min(left, POLL_S)) is not None:
                name = signal.Signals(signum).name
                self._write(f"{name} received while {self.phase}, which waits for {self.awaited}: exiting "
                            "now, with nothing left to save on this worker")
                self._exit(interrupted(signum))
                return
