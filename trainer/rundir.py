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
from .storage import Storage, StorageError

CONFIG_FILE = "config.json"
CHECKPOINTS_DIR = "checkpoints"
HISTORY_JSON = "history.json"
HISTORY_PNG = "history.png"
MODEL_FILE = "model.keras"
TENSORBOARD_DIR = "tensorboard"
ARCHIVE_DIR = "archive"
ROLLBACKS_FILE = "rollbacks.json"
LR_REQUEST = "lr_override"           # and lr_override.epoch-E, lr_override*.consumed

RUN_MARKERS = (CONFIG_FILE, CHECKPOINTS_DIR)  # what only a run that started has
OWN_NAMES = {*RUN_MARKERS, HISTORY_JSON, HISTORY_PNG, MODEL_FILE, TENSORBOARD_DIR, ARCHIVE_DIR, ROLLBACKS_FILE}
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


def precheck_training(run_dir: str) -> None:
    """What ``train`` can check before the job loads and without asking a store: a URL's
    form, everything about a local path."""
    storage = Storage(run_dir)
    if storage.is_remote:
        _check_url(storage.root)
    else:
        for_training(storage)


def for_training(storage: Storage) -> None:
    """``train``: a new or empty place, or a run (the trainer's own files count as one). A store
    is probed first: that fails fast, with a hint, on a missing bucket, credentials or endpoint."""
    if storage.is_remote:
        _check_url(storage.root)
        storage.probe()
    names = _entries(storage)
    foreign = [n for n in names if not is_own(n)]
    if foreign and not any(n in RUN_MARKERS for n in names):
        raise RunDirError(f"run dir {storage.root} holds files that are not a run's ({_some(foreign)}); "
                          f"expected {EXPECTED_NEW}")
    if not storage.is_remote:
        _check_writable(storage.root)


def for_reading(storage: Storage, command: str, hint: str = "") -> None:
    """``status``, ``export``, ``lr``: a run must be there (``hint``: what else to do when none is)."""
    if storage.is_remote:
        _check_url(storage.root)
    names = _entries(storage)
    if any(n in RUN_MARKERS for n in names):
        return
    if storage.is_remote or os.path.isdir(storage.root):
        found = f"it holds {_some(names)}" if names else "it is empty"
    else:
        found = "it does not exist"
    raise RunDirError(f"{command}: no run in {storage.root} ({found}); expected {EXPECTED_RUN}"
                      + (f"; {hint}" if hint else ""))


def _entries(storage: Storage) -> list[str]:
    return storage.listdir("") if storage.is_remote else _local_entries(storage.root)


def _check_url(url: str) -> None:
    protocol, _, rest = url.partition("://")
    if not rest.strip("/"):
        raise RunDirError(f"run dir {url}: the URL names no bucket or location; expected e.g. "
                          f"{protocol}://my-bucket/runs/fmnist")
    import fsspec
    if protocol not in fsspec.available_protocols():
        raise RunDirError(f"run dir {url}: unknown protocol {protocol!r}; expected a local path or an fsspec URL "
                          "(gs://, s3://, ...)")


def _local_entries(root: str) -> list[str]:
    """The names in the local folder ``root`` ([] if it does not exist yet)."""
    if os.path.isfile(root):
        raise RunDirError(f"run dir {root} is a file; expected a folder ({EXPECTED_NEW})")
    if not os.path.lexists(root):
        blocker = _file_above(root)
        if blocker:
            raise RunDirError(f"run dir {root} cannot be a folder: {blocker} is a file; expected a path "
                              "inside folders")
        return []
    if not os.path.isdir(root):
        raise RunDirError(f"run dir {root} is neither a folder nor a new path (a broken link or a device?); "
                          f"expected {EXPECTED_NEW}")
    try:
        return sorted(os.listdir(root))
    except PermissionError as exc:
        raise StorageError(f"cannot read the run dir {root}: {exc.strerror} (hint: may this user read and "
                           "write it? check its permissions and owner)") from None


def _file_above(path: str) -> str | None:
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return parent if os.path.lexists(parent) and not os.path.isdir(parent) else None


def _check_writable(root: str) -> None:
    existing = root
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if os.access(existing, os.W_OK | os.X_OK):
        return
    problem = "permission denied" if existing == root else f"{existing} is not writable"
    raise StorageError(f"cannot write the run dir {root}: {problem} (hint: may this user create files "
                       "there? check the permissions and the owner)")


def _some(names: list[str], limit: int = 4) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")
