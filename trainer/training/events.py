"""The run's events as JSON lines in ``<run-dir>/events.jsonl``: what tools read, whatever the console shows.

One record per line, each a JSON object with ``event`` (start, resume, step,
epoch, stop, end) and ``time`` (Unix seconds); ``step`` and ``epoch`` carry
the fields of the ``STEP``/``EPOCH`` lines of ``--log-format json``. Only
the chief writes it (the other workers get :data:`NO_EVENTS`), appending
across resumes, one write and one flush per line: a run killed outright
loses at most the line being written. A remote run dir keeps it in the local
staging folder beside the checkpoints, since an object store cannot append.
"""
from __future__ import annotations

import json
import os
import time


class Events:
    """Appends records to a JSON-lines file (none: ``path`` is None)."""

    def __init__(self, path: str | None):
        self._fh = None
        if path is not None:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            self._fh = open(path, "a", encoding="utf-8")  # noqa: SIM115 - open for the run's length

    def write(self, event: str, **fields) -> None:
        if self._fh is None:
            return
        record = {"event": event, "time": round(time.time(), 3), **fields}
        self._fh.write(json.dumps(record) + "\n")
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None


NO_EVENTS = Events(None)
