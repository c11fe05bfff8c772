"""The run directory: the names of what the trainer keeps in it, and what may serve as one.

Every command meets a run dir first, so each checks it before doing anything:
``train`` (and ``trainer.fit``, the launcher, ``lr --create``) needs a new
path, an empty folder, a folder holding only the trainer's own files, or a
run; ``status``, ``export`` and ``lr`` need a run (a ``config.json`` or a
``checkpoints/`` folder). Anything else is refused with one line naming the
path and what was expected: exit code 2 for a wrong path (a file, another
program's folder, a URL without a bucket), 5 when the path is right but
cannot be read or written (see ``trainer.errors``).

Local paths are checked on the file system; URLs by their form, then by
listing them (``train`` and ``lr --create`` probe the store first).
"""
from __future__ import annotations

import hashlib
import os
import re

from .errors import BAD_INPUT, TrainerError
from .storage import Place, PlaceKind, Storage, StorageError, open_storage

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
HISTORY_JSON = "history.json"
HISTORY_PNG = "history.png"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
ARCHIVE_DIR = "archive"
ROLLBACKS_FILE = "rollbacks.json"
EVENTS_FILE = "events.jsonl"         # the run's events as JSON lines (trainer.training.events)
LR_REQUEST = "lr_override"           # and lr_override.epoch-E, lr_override*.consumed

RUN_MARKERS = (CONFIG_FILE, CHECKPOINTS_DIR)  # what only a run that started has
OWN_NAMES = {*RUN_MARKERS, HISTORY_JSON, HISTORY_PNG, MODEL_FILE, TENSORBOARD_DIR, ARCHIVE_DIR, ROLLBACKS_FILE,
             EVENTS_FILE}
_OWN_PATTERN = re.compile(rf"^({re.escape(LR_REQUEST)}(\..*)?|\.probe-[0-9a-f]+|.*\.tmp-\d+-[0-9a-f]+)$")
EXPECTED_NEW = "a new path, an empty folder or a run of `trainer train`"
EXPECTED_RUN = "a run directory written by `trainer train` (with config.json or checkpoints/)"


class RunDirError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """The path cannot be this command's run dir (exit code 2); the message names it."""


def local_dir(storage: Storage, rel: str, staging_dir: str | None = None, worker: int | None = None) -> str:
    """The folder on this machine where TensorFlow reads and writes the run dir's ``rel``
    (checkpoints, TensorBoard logs): the run dir's own for a local run; for a remote one a
    staging folder that is uploaded from (``staging_dir``, else one per run URL under
    $TRAINER_STAGING_DIR or ~/.cache/trainer/staging), a copy of its own for a ``worker``
    other than the chief."""
    local = storage.local_path(rel)
    if local is not None:
        return local
    base = staging_dir or os.path.join(
        os.environ.get("TRAINER_STAGING_DIR", os.path.join(os.path.expanduser("~"), ".cache", "trainer", "staging")),
        hashlib.sha1(storage.root.encode()).hexdigest()[:16])
    return os.path.join(base, rel) if worker is None else os.path.join(base, f"worker-{worker}", rel)


def is_own(name: str) -> bool:
    """A name the trainer itself writes into a run dir."""
    return name in OWN_NAMES or bool(_OWN_PATTERN.match(name))


def precheck_training(run_dir: str) -> Storage | None:
    """What ``train`` can check before the job loads and without asking a store: a URL's
    form, everything about a local path. The local path's storage, for more such checks."""
    storage = open_storage(run_dir)
    place = _usable_place(storage)
    if place.kind is PlaceKind.STORE:
        return None
    _check_training(storage, place)
    return storage


def for_training(storage: Storage) -> None:
    """``train``: a new or empty place, or a run (the trainer's own files count as one). A store
    is probed first: that fails fast, with a hint, on a missing bucket, credentials or endpoint."""
    _check_training(storage, _usable_place(storage))


def _check_training(storage: Storage, place: Place) -> None:
    storage.check_reachable()
    names = _entries(storage, place)
    foreign = [n for n in names if not is_own(n)]
    if foreign and not any(n in RUN_MARKERS for n in names):
        raise RunDirError(f"run dir {storage.root} holds files that are not a run's ({_some(foreign)}); "
                          f"expected {EXPECTED_NEW}")
    storage.check_writable()


def for_reading(storage: Storage, command: str, hint: str = "") -> None:
    """``status``, ``export``, ``lr``: a run must be there (``hint``: what else to do when none is)."""
    place = _usable_place(storage)
    names = _entries(storage, place)
    if any(n in RUN_MARKERS for n in names):
        return
    if place.kind is PlaceKind.NEW:
        found = "it does not exist"
    else:
        found = f"it holds {_some(names)}" if names else "it is empty"
    raise RunDirError(f"{command}: no run in {storage.root} ({found}); expected {EXPECTED_RUN}"
                      + (f"; {hint}" if hint else ""))


_PLACE_PROBLEMS = {
    PlaceKind.NO_LOCATION: (": the URL names no bucket or location; expected e.g. "
                            "{detail}://my-bucket/runs/fmnist"),
    PlaceKind.UNKNOWN_PROTOCOL: (": unknown protocol {detail!r}; expected a local path or an fsspec URL "
                                 "(gs://, s3://, ...)"),
    PlaceKind.FILE: f" is a file; expected a folder ({EXPECTED_NEW})",
    PlaceKind.UNDER_FILE: " cannot be a folder: {detail} is a file; expected a path inside folders",
    PlaceKind.ODD: (" is neither a folder nor a new path (a broken link or a device?); "
                    f"expected {EXPECTED_NEW}"),
}


def _usable_place(storage: Storage) -> Place:
    """The root's place if a run dir can be there; RunDirError naming what is wrong if not."""
    place = storage.place()
    problem = _PLACE_PROBLEMS.get(place.kind)
    if problem:
        raise RunDirError(f"run dir {storage.root}" + problem.format(detail=place.detail))
    return place


def _entries(storage: Storage, place: Place) -> list[str]:
    """The names in the run dir ([] if it does not exist yet)."""
    if place.kind is PlaceKind.NEW:
        return []
    try:
        return storage.listdir("")
    except PermissionError as exc:
        raise StorageError(f"cannot read the run dir {storage.root}: {exc.strerror} (hint: may this user read and "
                           "write it? check its permissions and owner)") from None


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
