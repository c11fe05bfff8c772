"""A background thread for slow I/O (checkpoint writes, uploads, history files), so the
training loop only hands over work and never waits on a disk or an object store."""
from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger("trainer")


class LatestOnlyWorker:
    """A background thread that serves one pending item at a time; an item submitted
    while another waits replaces it (only the newest state is worth writing).
    Subclasses implement ``_serve(item)`` and end it with ``_done()``."""

    def __init__(self, name: str):
        self._cond = threading.Condition()
        self._pending = None
        self._busy = None
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, item) -> None:
        with self._cond:
            self._pending = item
            self._cond.notify_all()

    def idle(self) -> bool:
        return self._pending is None and self._busy is None

    def wait_idle(self, timeout_s: float | None = None) -> bool:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self.idle():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cond.wait(0.5 if left is None else min(left, 0.5))
            return self.idle()

    def stop(self, join_s: float = 1.0) -> None:
        """Serve nothing more; wait ``join_s`` for the current item (a hung store may never end it)."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(timeout=join_s)

    def _next(self):
        """Block until there is an item to serve (or we are stopping: None)."""
        with self._cond:
            while self._pending is None and not self._stopping:
                self._cond.wait()
            if self._stopping:
                return None
            self._busy, self._pending = self._pending, None
            return self._busy

    def _done(self, retry_item=None) -> None:
        with self._cond:
            if retry_item is not None and self._pending is None:
                self._pending = retry_item
            self._busy = None
            self._cond.notify_all()

    def _run(self) -> None:
        while (item := self._next()) is not None:
            try:
                self._serve(item)
            except Exception:  # a bug must not leave flushes waiting on a dead thread
                log.exception("%s: unexpected error", self._thread.name)
                self._done()
