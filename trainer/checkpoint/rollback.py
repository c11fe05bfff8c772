"""Going back to an earlier snapshot: ``train --from ckpt-N | epoch-E``.

The classic workflow: unhappy with the last epochs, go back to the snapshot of
epoch 40, maybe lower the learning rate, and train on from there. The
checkpoint named is verified first (a bad reference or a damaged checkpoint
stops with exit code 2 and moves nothing); then every later checkpoint, the
history files and the exported model are copied to
``archive/rollback-<time>-to-ckpt-N/`` and only then removed (commit markers
first), so the named checkpoint is the newest and the start resumes from it.
Nothing is ever deleted without a copy in the archive.

A rollback is recorded in ``rollbacks.json``. A requeued SLURM job repeats its
arguments: a start with the same ``--from`` in the same SLURM job resumes
normally instead of rolling back again.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

from ..errors import BAD_INPUT, TrainerError
from ..rundir import ARCHIVE_DIR as ARCHIVE
from ..rundir import HISTORY_JSON, HISTORY_PNG, MODEL_FILE
from ..rundir import ROLLBACKS_FILE as RECORD
from .commit import MISSING, stored_damage
from .index import DIR, MARKER, committed_manifests, number_of, resolve

log = logging.getLogger("trainer")

MOVED_FILES = (HISTORY_JSON, HISTORY_PNG, MODEL_FILE)


class RollbackError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """``--from`` names no usable checkpoint (exit code 2); nothing was moved."""


@dataclass
class Plan:
    reference: str
    target: dict        # the manifest of the checkpoint to go back to
    later: list[str]    # checkpoint files newer than it
    newest: dict        # the manifest of the newest committed checkpoint
    job_id: str | None


def _records(storage) -> list[dict]:
    try:
        return json.loads(storage.read_text(RECORD))
    except (FileNotFoundError, ValueError):
        return []


def plan(storage, reference: str, job_id: str | None = None) -> Plan | None:
    """Check ``reference`` (read-only; its files verified against its manifest as a restore would);
    None when this SLURM job already rolled back to it."""
    records = _records(storage)
    if job_id and records and records[-1].get("slurm_job") == job_id and records[-1]["reference"] == reference:
        log.info("--from %s: this SLURM job rolled back to it before it was requeued; resuming normally",
                 reference)
        return None
    try:
        target = resolve(storage, reference)
    except ValueError as exc:
        raise RollbackError(str(exc)) from None
    damaged = stored_damage(storage, target)
    if damaged:
        name, kind = damaged
        if kind == MISSING:
            raise RollbackError(f"--from {reference}: ckpt-{target['number']} is damaged ({name} is missing); "
                                "nothing was moved")
        raise RollbackError(f"--from {reference}: ckpt-{target['number']} is damaged ({name} fails its size "
                            "or CRC32 check); nothing was moved. Choose another snapshot (see `status`)")
    names = storage.listdir(DIR)
    later = [n for n in names if (number_of(n) or 0) > target["number"]]
    return Plan(reference, target, later, committed_manifests(storage)[0], job_id)


def execute(storage, p: Plan, staging_dir: str | None = None) -> dict:
    """Archive everything after the target; returns the rollback's record."""
    number = p.target["number"]
    folder = f"{ARCHIVE}/rollback-{time.strftime('%Y%m%d-%H%M%S')}-to-ckpt-{number}"
    extra = [name for name in MOVED_FILES if storage.exists(name)]
    for name in p.later:
        storage.copy(f"{DIR}/{name}", f"{folder}/{DIR}/{name}")
    for name in extra:
        storage.copy(name, f"{folder}/{name}")
    for name in sorted(p.later, key=lambda n: not n.endswith(MARKER)):  # uncommit first
        storage.delete(f"{DIR}/{name}")
    if MODEL_FILE in extra:
        storage.delete(MODEL_FILE)
    if staging_dir and os.path.isdir(staging_dir):  # a remote run's local copies are a cache
        for name in os.listdir(staging_dir):
            if (number_of(name) or 0) > number:
                os.remove(os.path.join(staging_dir, name))
    record = {"reference": p.reference, "number": number, "epoch": p.target.get("epoch"),
              "step_in_epoch": p.target.get("step_in_epoch"), "global_step": p.target.get("global_step"),
              "from_number": p.newest["number"], "from_global_step": p.newest.get("global_step"),
              "archive": folder, "moved": len(p.later) + len(extra),
              "slurm_job": p.job_id, "time": time.time()}
    storage.write_text(RECORD, json.dumps(_records(storage) + [record], indent=1) + "\n")
    log.warning("rolled back to ckpt-%d (%s): %d later file(s) moved to %s", number, p.reference,
                record["moved"], storage.url(folder))
    return record
