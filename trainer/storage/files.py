"""Local files that readers never see half-written: a temporary file beside the target,
fsynced and renamed over it; and the removal of temporaries that a killed writer left."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid


def tmp_name(path: str) -> str:
    """A temporary name beside ``path``, unique per process and thread.

    ".tmp-" marks leftovers for checkpoint.index.leftovers(); the pid lets
    :func:`writer_gone` tell a dead writer's file from a live one's."""
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def writer_gone(name: str) -> bool:
    """Is ``name`` a temporary file whose writing process no longer exists?"""
    match = re.search(r"\.tmp-(\d+)-[0-9a-f]+$", name)
    if not match:
        return False
    try:
        os.kill(int(match.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, owned by someone else
        return False
    return False


def remove_quietly(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _replacing(path: str):
    """A temporary file beside ``path``; on success fsync it, rename it over ``path`` and
    fsync the directory; on failure remove it and leave ``path`` untouched."""
    tmp = tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, data: bytes) -> None:
    """Write a local file so that readers see the old or the new content, never a torn one."""
    with _replacing(path) as fh:
        fh.write(data)


def atomic_copy(src: str, dst: str) -> None:
    """Copy a local file as :func:`atomic_write` writes one, creating ``dst``'s folder."""
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(src, "rb") as fin, _replacing(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
