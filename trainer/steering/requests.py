"""Live learning-rate changes: requests polled from the run dir (applied by ``training.lr_change``).

A background thread lists the run directory every ``poll_seconds`` (one
cheap request for an object store) and reads any request file; the training
loop only looks at what it found.
"""
from __future__ import annotations

import logging
import threading

from ..storage import StorageError
from . import lr_override
from .lr_override import OverrideError, Request

log = logging.getLogger("trainer")


class LrRequests:
    """The pending requests of a run dir; ``start()`` polls them in the background."""

    def __init__(self, storage, poll_seconds: float):
        self.storage = storage
        self.poll_seconds = poll_seconds
        self._lock = threading.Lock()
        self._requests: list[Request] = []
        self._complained: set[str] = set()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def refresh(self) -> list[Request]:
        """Scan now (at start: a malformed file raises OverrideError, nothing is trained)."""
        found = lr_override.scan(self.storage)
        with self._lock:
            self._requests = found
        return found

    def start(self) -> None:
        self._thread = threading.Thread(target=self._poll, name="lr-requests", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._done.set()

    def _poll(self) -> None:
        seen = {r.digest for r in self._requests}
        while not self._done.wait(self.poll_seconds):
            try:
                for req in self.refresh():
                    if req.digest not in seen:
                        seen.add(req.digest)
                        when = ("at the next step boundary" if req.at_epoch is None
                                else f"when epoch {req.at_epoch} begins")
                        log.info("found a learning-rate request in %s: %g, applied %s",
                                 self.storage.url(req.name), req.value, when)
            except OverrideError as exc:  # a typo while training: say so once, keep training
                if str(exc) not in self._complained:
                    self._complained.add(str(exc))
                    log.error("ignoring a learning-rate request: %s", exc)
            except (StorageError, OSError) as exc:
                log.warning("could not check %s for learning-rate requests: %s", self.storage.root, exc)

    def drop(self, req: Request) -> None:
        with self._lock:
            self._requests = [r for r in self._requests if r.name != req.name]

    def immediate(self) -> Request | None:
        with self._lock:
            return next((r for r in self._requests if r.at_epoch is None), None)

    def due(self, epoch: int) -> list[Request]:
        """Scheduled requests for ``epoch`` or an earlier one (those came late), oldest first."""
        with self._lock:
            return sorted((r for r in self._requests if r.at_epoch is not None and r.at_epoch <= epoch),
                          key=lambda r: r.at_epoch)
