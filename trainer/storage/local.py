"""A run dir on a local (or mounted) file system: plain OS calls, atomic replaces.

Local operations raise the OS's own ``OSError`` (which names the path), except
:meth:`Storage.probe` and :meth:`LocalStorage.check_writable`, which raise StorageError."""
from __future__ import annotations

import os

from .base import Place, PlaceKind, Storage
from .errors import StorageError, describe, hint
from .files import atomic_copy, atomic_write, remove_quietly, writer_gone


class LocalStorage(Storage):
    """A run dir on a local (or mounted shared) filesystem: plain OS calls, atomic renames."""

    def __init__(self, root: str, options: dict | None = None):
        super().__init__(os.path.abspath(root.removeprefix("file://")), options)

    def _local(self, rel: str) -> str:
        rel = rel.strip("/")
        return os.path.join(self.root, rel) if rel else self.root

    def local_path(self, rel: str) -> str | None:
        return self._local(rel)

    def exists(self, rel: str) -> bool:
        return os.path.exists(self._local(rel))

    def read_bytes(self, rel: str) -> bytes:
        with open(self._local(rel), "rb") as fh:
            return fh.read()

    def write_bytes(self, rel: str, data: bytes) -> None:
        path = self._local(rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        atomic_write(path, data)

    def _put(self, local_path: str, rel: str) -> None:
        target = self._local(rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        atomic_copy(local_path, target)

    def download(self, rel: str, local_path: str) -> None:
        atomic_copy(self._local(rel), local_path)

    def copy(self, src: str, dst: str) -> None:
        atomic_copy(self._local(src), self._local(dst))

    def listdir(self, rel: str = "") -> list[str]:
        try:
            return sorted(os.listdir(self._local(rel)))
        except (FileNotFoundError, NotADirectoryError):
            return []

    def remove_torn_writes(self, rel: str = "") -> list[str]:
        torn = [n for n in self.listdir(rel) if writer_gone(n)]
        for name in torn:
            remove_quietly(self._local(os.path.join(rel, name)))
        return torn

    def delete(self, rel: str) -> None:
        try:
            os.remove(self._local(rel))
        except FileNotFoundError:
            pass

    def size(self, rel: str) -> int:
        return os.path.getsize(self._local(rel))

    def _round_trip(self, rel: str, payload: bytes, timeout_s: float, prefix: str) -> bytes:
        try:
            self.write_bytes(rel, payload)
            data = self.read_bytes(rel)
            self.delete(rel)
        except OSError as exc:
            raise StorageError(f"{prefix}: {describe(exc)}{hint(exc, self.root)}") from exc
        return data

    def place(self) -> Place:
        if os.path.isfile(self.root):
            return Place(PlaceKind.FILE)
        if not os.path.lexists(self.root):
            blocker = _file_above(self.root)
            return Place(PlaceKind.UNDER_FILE, blocker) if blocker else Place(PlaceKind.NEW)
        return Place(PlaceKind.FOLDER) if os.path.isdir(self.root) else Place(PlaceKind.ODD)

    def check_writable(self) -> None:
        existing = self.root
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if os.access(existing, os.W_OK | os.X_OK):
            return
        problem = "permission denied" if existing == self.root else f"{existing} is not writable"
        raise StorageError(f"cannot write the run dir {self.root}: {problem} (hint: may this user create files "
                           "there? check the permissions and the owner)")


def _file_above(path: str) -> str | None:
    """The nearest existing ancestor of ``path`` if it is not a folder (no folder can be made below it)."""
    parent = os.path.dirname(path)
    while parent and not os.path.lexists(parent) and parent != os.path.dirname(parent):
        parent = os.path.dirname(parent)
    return parent if os.path.lexists(parent) and not os.path.isdir(parent) else None
