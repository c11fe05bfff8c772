"""Signal handling: handlers only record the signal; training code polls it.

The checkpoint flush, upload and exit all happen in ordinary code at the next
step boundary on the main thread. A second signal means "stop now": the
process exits at once with 128 + signal number, leaving committed checkpoints
as they are (a checkpoint only counts once its commit marker is written).
"""
from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable

CAUGHT = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class StopRequest:
    """Records the first stop signal; installs and removes its handlers."""

    def __init__(self, signals=CAUGHT, abort: Callable[[int], None] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.signals = tuple(signals)
        self.signum: int | None = None
        self.received_at: float | None = None
        self._abort = abort or _abort_now
        self._clock = clock
        self._previous: dict[int, object] = {}
        self._depth = 0

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def handle(self, signum, frame=None) -> None:
        if self.signum is not None:
            self._abort(signum)
            return
        self.signum = signum
        self.received_at = self._clock()

    def install(self) -> StopRequest:
        if self.signals and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("signal handlers can only be installed from the main thread")
        self._depth += 1
        if self._depth == 1:  # (the CLI installs them early; train() enters again: keep the first)
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def reclaim(self) -> None:
        """Register the handlers again. TensorFlow's coordination service (started with a
        multi-worker strategy) installs a SIGTERM handler of its own in C++, which Python's
        own table of handlers does not show."""
        for sig in self._previous:
            signal.signal(sig, self.handle)

    def uninstall(self) -> None:
        self._depth -= 1
        if self._depth > 0:
            return
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()

    def __enter__(self) -> StopRequest:
        return self.install()

    def __exit__(self, *exc) -> None:
        self.uninstall()


def _abort_now(signum: int) -> None:
    os.write(2, f"\n[trainer] second signal ({signal.Signals(signum).name}): aborting now, "
                f"last committed checkpoint is kept\n".encode())
    os._exit(128 + int(signum))


def ignore_from_now_on(signals=CAUGHT) -> None:
    """For a process whose outcome is decided: a stop signal while the interpreter shuts
    down (TensorFlow takes a second) must not end it with 128 + signal, which SLURM
    scripts read as "stopped, requeue me" and would requeue a finished run."""
    for sig in signals:
        signal.signal(sig, signal.SIG_IGN)
