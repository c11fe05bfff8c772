"""Learning-rate requests: files in the run directory, applied exactly once.

* ``lr_override``: one number; applied at the next step boundary of a run that
  is training (polled every ``--lr-poll-seconds``), else at the next start.
* ``lr_override.epoch-E``: applied when epoch E begins (0-based, as Keras's
  ``LearningRateScheduler`` counts: after E epochs are done; the progress
  line calls it "Epoch E+1/N"), so a whole schedule can be queued in advance.

``python -m trainer lr RUN 1e-2 [--at-epoch E]`` writes them (writing one by
hand works too). The trainer applies a request, saves a checkpoint holding
the new rate and the request's digest, and only then renames the file to
``<name>.consumed``: a request seen again after a crash is recognised by its
digest and only marked consumed.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import time
from dataclasses import dataclass

from ..errors import BAD_INPUT, TrainerError
from ..rundir import LR_REQUEST as PENDING

SCHEDULED_PREFIX = PENDING + ".epoch-"
CONSUMED_SUFFIX = ".consumed"
MAX_LR = 10.0
FORMAT = "one positive number such as 0.01 or 1e-2 (lines starting with # are ignored)"
_SCHEDULED = re.compile(r"^lr_override\.epoch-(\d+)$")


class OverrideError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """A malformed request file; the message names the file and the format."""


@dataclass(frozen=True)
class Request:
    value: float
    digest: str
    name: str                  # file name in the run dir
    at_epoch: int | None = None  # None: as soon as possible


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


def digest(name: str, text: str) -> str:
    return hashlib.sha256(f"{name}\n{text}".encode()).hexdigest()[:16]


def file_name(at_epoch: int | None) -> str:
    return PENDING if at_epoch is None else f"{SCHEDULED_PREFIX}{at_epoch}"


def request_names(names) -> list[str]:
    """The pending request files among a run dir's file names."""
    return sorted(n for n in names if n == PENDING or _SCHEDULED.match(n))


def read(storage, name: str) -> Request | None:
    """The request in file ``name``; None if it is gone; OverrideError if malformed."""
    try:
        text = storage.read_text(name)
    except FileNotFoundError:
        return None
    match = _SCHEDULED.match(name)
    return Request(parse(text, storage.url(name)), digest(name, text), name,
                   int(match.group(1)) if match else None)


def scan(storage) -> list[Request]:
    """Every pending request (one listing, then one read per request file)."""
    out = []
    for name in request_names(storage.listdir("")):
        found = read(storage, name)
        if found is not None:
            out.append(found)
    return out


def request(storage, value_text: str, at_epoch: int | None = None) -> tuple[float, str]:
    """Validate and write a request (the ``lr`` command); (value, file name)."""
    value = check(value_text.strip(), "learning rate")
    if at_epoch is not None and at_epoch < 0:
        raise OverrideError(f"--at-epoch: must be >= 0, got {at_epoch}")
    name = file_name(at_epoch)
    storage.write_text(name, f"{value_text.strip()}\n")
    return value, name


def mark_consumed(storage, req: Request, global_step: int) -> None:
    """Record the applied request, then remove its file."""
    record = {"lr": req.value, "digest": req.digest, "global_step": global_step, "at_epoch": req.at_epoch,
              "time": time.time()}
    storage.write_text(req.name + CONSUMED_SUFFIX, json.dumps(record) + "\n")
    storage.delete(req.name)
