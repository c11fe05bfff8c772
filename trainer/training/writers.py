"""The run's background writers, flushed and closed together."""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from ..checkpoint.store import CheckpointStore
from .history import HistoryWriter

log = logging.getLogger("trainer")


@dataclass
class Writers:
    """Checkpoints (with their uploads) and the history files."""
    store: CheckpointStore
    history: HistoryWriter | None  # the chief's
    timeout_s: float

    def flush(self, why: str, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``, default the stop budget) until both have written everything."""
        timeout_s = timeout_s or self.timeout_s
        started = time.monotonic()
        ok = self.store.flush(timeout_s)
        if self.history:
            self.history.wait_idle(max(0.0, timeout_s - (time.monotonic() - started)))
        if self.store.mirror.uploads:  # checkpoints are staged, then uploaded by this process
            if ok:
                log.info("upload flushed (%s) in %.2fs", why, time.monotonic() - started)
            else:
                log.error("upload did not finish within %gs (%s); the newest checkpoint is kept "
                          "locally in %s and the next start on this machine uploads it",
                          timeout_s, why, self.store.local_dir)
        return ok

    def commit(self) -> bool:
        """Wait (at most the stop budget) until every checkpoint saved so far is committed, and
        uploaded for a remote run dir; not for the history files."""
        return self.store.flush(self.timeout_s)

    def close(self) -> None:
        self.store.close()
        if self.history:
            self.history.stop()
