"""The interface every storage backend implements, and the choice of backend for a root."""
from __future__ import annotations

import enum
import errno
import os
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass

from .errors import StorageError

PROBE_TIMEOUT_S = 30.0
_PROBE_PAYLOAD = b"trainer storage probe\n"


class PlaceKind(enum.Enum):
    """What can be at a root; each value says what it means."""
    FOLDER = "an existing folder"
    NEW = "nothing yet, and a folder can be made there"
    STORE = "a location in an object store: what it holds is known only by asking the store"
    FILE = "a regular file"
    UNDER_FILE = "a path below a file, where no folder can be made"
    ODD = "neither a folder nor a new path (a broken link, a device)"
    NO_LOCATION = "a URL that names no bucket or location"
    UNKNOWN_PROTOCOL = "a URL whose protocol fsspec does not know"


@dataclass(frozen=True)
class Place:
    """What a storage's root is, told without asking a store, so that a command can refuse
    a wrong path before doing anything. ``detail``: the file in the way (UNDER_FILE) or
    the URL's protocol (NO_LOCATION, UNKNOWN_PROTOCOL)."""
    kind: PlaceKind
    detail: str = ""


class Storage(ABC):
    """A run directory's files, addressed by '/'-separated paths relative to its root.

    Open one with :func:`trainer.storage.open_storage`, which picks the backend for the root once."""

    def __init__(self, root: str, options: dict | None = None):
        self.root = root
        self.options = dict(options or {})

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    def url(self, rel: str) -> str:
        """The root joined with a '/'-separated relative path."""
        rel = rel.strip("/")
        return f"{self.root}/{rel}" if rel else self.root

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def upload(self, local_path: str, rel: str) -> None:
        """Copy a local file to ``rel`` (atomically for local roots, as one object for remote ones)."""
        if not os.path.isfile(local_path):
            raise FileNotFoundError(errno.ENOENT, "no such file to upload", local_path)
        self._put(local_path, rel)

    def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """Fail fast at start: write, read back and delete a small ``.probe-*`` object.

        Raises StorageError with a hint for missing/rejected credentials, a
        read-only bucket, a missing bucket or an unreachable endpoint. Remote
        probes give up after ``timeout_s`` in all (backends' own retries included).
        """
        rel = f".probe-{uuid.uuid4().hex[:12]}"
        prefix = f"cannot use {self.root} as a run directory"
        if self._round_trip(rel, _PROBE_PAYLOAD, timeout_s, prefix) != _PROBE_PAYLOAD:
            raise StorageError(f"{prefix}: {self.url(rel)} read back different bytes than written")

    # -- what each backend implements -------------------------------------------------
    @abstractmethod
    def local_path(self, rel: str) -> str | None:
        """The real filesystem path for local roots; None for remote ones."""

    @abstractmethod
    def exists(self, rel: str) -> bool: ...

    @abstractmethod
    def read_bytes(self, rel: str) -> bytes:
        """Raises FileNotFoundError (naming the URL) if there is no such file."""

    @abstractmethod
    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace the file whole: readers see the old or the new content, never a mix."""

    @abstractmethod
    def download(self, rel: str, local_path: str) -> None:
        """Copy ``rel`` to a local file via a temporary file and a rename."""

    @abstractmethod
    def copy(self, src: str, dst: str) -> None:
        """Copy the file ``src`` to ``dst`` inside the run dir (atomically for local roots)."""

    @abstractmethod
    def listdir(self, rel: str = "") -> list[str]:
        """Sorted base names of the direct children; [] if there is no such directory."""

    @abstractmethod
    def remove_torn_writes(self, rel: str = "") -> list[str]:
        """Delete the temporary files that writers killed inside an atomic write left in
        ``rel`` (local only: a remote write is one PUT). Files of live processes stay."""

    @abstractmethod
    def delete(self, rel: str) -> None:
        """Delete a file; a missing one is not an error."""

    @abstractmethod
    def size(self, rel: str) -> int:
        """Size in bytes; FileNotFoundError if there is no such file."""

    @abstractmethod
    def place(self) -> Place:
        """What the root is, without asking a store (see :class:`Place`)."""

    def check_reachable(self) -> None:
        """Before the first listing: fail fast where a store may be unreachable or refuse us
        (remote backends probe); a local path has nothing to reach."""

    def check_writable(self) -> None:
        """Raise StorageError if files cannot be created under the root, without creating
        any. Remote backends rely on :meth:`check_reachable`'s probe, which wrote one."""

    @abstractmethod
    def _put(self, local_path: str, rel: str) -> None:
        """:meth:`upload` of an existing local file."""

    @abstractmethod
    def _round_trip(self, rel: str, payload: bytes, timeout_s: float, prefix: str) -> bytes:
        """:meth:`probe`'s write, read and delete of ``rel``: what was read back. Failures
        raise StorageError starting with ``prefix``."""
