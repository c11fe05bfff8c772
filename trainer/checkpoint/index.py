"""Names in a checkpoint directory, and reading commit markers without TensorFlow.

``ckpt-<n>.commit.json`` marks checkpoint n as complete; ``ckpt-<n>.corrupt.json``
marks one that failed verification and was set aside; ``ckpt-<n>.milestone`` (one
of the checkpoint's files, so it is uploaded and verified with it) marks an epoch
milestone that retention never deletes.
"""
from __future__ import annotations

import json
import re

from ..errors import BAD_INPUT, TrainerError
from ..rundir import CHECKPOINTS_DIR as DIR

MARKER = ".commit.json"
MILESTONE = ".milestone"
CORRUPT = ".corrupt.json"
STATE_FILE = "checkpoint"
_NAME = re.compile(r"^ckpt-(\d+)(?:\.|_temp)")


def number_of(name: str) -> int | None:
    match = _NAME.match(name)
    return int(match.group(1)) if match else None


def committed(names) -> list[int]:
    """Numbers with a commit marker, newest first."""
    return sorted({number_of(n) for n in names if n.endswith(MARKER)}, reverse=True)


def set_aside(names) -> set[int]:
    return {number_of(n) for n in names if n.endswith(CORRUPT)}


def milestones(names) -> set[int]:
    return {number_of(n) for n in names if n.endswith(MILESTONE)}


def committed_manifests(storage) -> list[dict]:
    """Readable manifests of the run's committed checkpoints, newest first."""
    out = []
    for number in committed(storage.listdir(DIR)):
        try:
            out.append(json.loads(storage.read_text(f"{DIR}/ckpt-{number}{MARKER}")))
        except (FileNotFoundError, ValueError):
            continue
    return out


def state_file_text(numbers) -> str:
    """TF's ``checkpoint`` state file naming the given (committed) checkpoints."""
    numbers = sorted(numbers)
    lines = [f'model_checkpoint_path: "ckpt-{numbers[-1]}"']
    lines += [f'all_model_checkpoint_paths: "ckpt-{n}"' for n in numbers]
    return "\n".join(lines) + "\n"


def to_prune(names, max_to_keep: int, keep_also=()) -> list[str]:
    """Names to delete so that the newest ``max_to_keep`` committed checkpoints (and every
    milestone) remain.

    Also drops uncommitted files older than the newest commit (leftovers of a
    dead writer). Never touches set-aside checkpoints or anything newer than
    the newest commit (it may be in flight). Markers come first, so a crash
    midway never leaves a marker whose files are gone.
    """
    names = list(names)
    done = committed(names)
    if not done:
        return []
    keep = set(done[:max_to_keep]) | set(keep_also) | set_aside(names) | (milestones(names) & set(done))
    doomed = [n for n in names if number_of(n) is not None and number_of(n) not in keep
              and number_of(n) < done[0]]
    return sorted(doomed, key=lambda n: not n.endswith(MARKER))


def leftovers(names) -> list[str]:
    """At start-up no writer is alive: every uncommitted checkpoint file is a leftover."""
    names = list(names)
    keep = set(committed(names)) | set_aside(names)
    return sorted(n for n in names if (number_of(n) is not None and number_of(n) not in keep)
                  or ".tmp-" in n)


class UnknownCheckpoint(TrainerError, ValueError, exit_code=BAD_INPUT):
    """A ``--from`` reference that names no committed checkpoint (exit code 2)."""


_REFERENCE = re.compile(r"^(?:ckpt-(\d+)|epoch-(\d+))$")


def describe(manifest: dict) -> str:
    where = (f"end of epoch {manifest.get('epoch')}" if manifest.get("step_in_epoch") == 0
             else f"epoch {manifest.get('epoch', 0) + 1} step {manifest.get('step_in_epoch')}")
    return f"ckpt-{manifest['number']} ({where}{', milestone' if manifest.get('milestone') else ''})"


def resolve(storage, reference: str, flag: str = "--from") -> dict:
    """The manifest of the committed checkpoint ``ckpt-N``, or of the end of epoch E (``epoch-E``)."""
    match = _REFERENCE.match(reference.strip())
    manifests = committed_manifests(storage)
    kept = ", ".join(describe(m) for m in manifests) or "none"
    if not match:
        raise UnknownCheckpoint(f"{flag} {reference}: expected ckpt-N or epoch-E (kept: {kept})")
    number, epoch = match.groups()
    if number is not None:
        found = [m for m in manifests if m["number"] == int(number)]
    else:
        found = [m for m in manifests if m.get("epoch") == int(epoch) and m.get("step_in_epoch") == 0]
    if not found:
        raise UnknownCheckpoint(f"{flag} {reference}: no committed checkpoint of that name in "
                                f"{storage.url(DIR)} (kept: {kept})")
    return found[0]
