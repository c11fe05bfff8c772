"""The learning-rate override file: ``<run-dir>/lr_override``.

Write one number into it (``python -m trainer lr RUN 1e-2`` does this); the
next start of the run applies it after the optimizer is restored, saves a
checkpoint holding the new rate, and only then renames the file to
``lr_override.consumed`` so it is never applied twice.
"""
from __future__ import annotations

import hashlib
import json
import math
import time

PENDING = "lr_override"
CONSUMED = "lr_override.consumed"
MAX_LR = 10.0
FORMAT = "one positive number such as 0.01 or 1e-2 (lines starting with # are ignored)"


class OverrideError(ValueError):
    """A malformed override file; the message names the file and the format."""


def parse(text: str, source: str = PENDING) -> float:
    lines = [ln.strip() for ln in text.splitlines()]
    values = [ln for ln in lines if ln and not ln.startswith("#")]
    if len(values) != 1:
        found = "nothing" if not values else f"{len(values)} values"
        raise OverrideError(f"{source}: found {found}; expected {FORMAT}")
    return check(values[0], source)


def check(raw: str, source: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise OverrideError(f"{source}: {raw[:40]!r} is not a number; expected {FORMAT}") from None
    if not math.isfinite(value):
        raise OverrideError(f"{source}: {raw!r} is not finite; expected {FORMAT}")
    if value <= 0:
        raise OverrideError(f"{source}: learning rate must be > 0, got {raw!r}; expected {FORMAT}")
    if value > MAX_LR:
        raise OverrideError(f"{source}: learning rate {raw!r} is above {MAX_LR:g}, "
                            "almost certainly a typo; expected " + FORMAT)
    return value


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def read_pending(storage) -> tuple[float, str] | None:
    """(value, digest of the file) of a pending override, or None."""
    try:
        text = storage.read_text(PENDING)
    except FileNotFoundError:
        return None
    return parse(text, storage.url(PENDING)), digest(text)


def request(storage, value_text: str) -> float:
    """Validate and write a pending override (the ``lr`` command)."""
    value = check(value_text.strip(), "learning rate")
    storage.write_text(PENDING, f"{value_text.strip()}\n")
    return value


def mark_consumed(storage, value: float, file_digest: str, global_step: int) -> None:
    """Record the applied override, then remove the pending file."""
    record = {"lr": value, "digest": file_digest, "global_step": global_step, "time": time.time()}
    storage.write_text(CONSUMED, json.dumps(record) + "\n")
    storage.delete(PENDING)
