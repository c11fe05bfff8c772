"""A run dir in an object store (or any fsspec filesystem): retries, deadlines, hints.

Failures are raised as StorageError naming the URL with a hint, except that a
missing object stays FileNotFoundError for ``read_bytes``/``read_text``/``size``/
``download``. fsspec and the backend are imported when the filesystem is first used.
"""
from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable

from .base import Place, PlaceKind, Storage
from .errors import RetryPolicy, StorageError, describe, hint, is_transient
from .files import remove_quietly, tmp_name

log = logging.getLogger("trainer.storage")


class RemoteStorage(Storage):
    """A run dir in an object store (any fsspec URL): every call retried and bounded in time."""

    def __init__(self, root: str, options: dict | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        super().__init__(_strip_url(root), options)
        self.retry = retry
        self._sleep = sleep
        self._fs = None
        self._fs_root = ""
        self._lock = threading.Lock()

    # -- plumbing ----------------------------------------------------------
    @property
    def fs(self):
        """The fsspec filesystem (created on first use)."""
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    try:
                        self._fs, self._fs_root = _open_fs(self.root, self.options)
                    except Exception as exc:  # unknown protocol, missing package, bad options or key file
                        raise StorageError(f"cannot open {self.root} with options {sorted(self.options)}: "
                                           f"{describe(exc)} (hint: check the URL, the storage options and "
                                           "that the fsspec backend (s3fs, gcsfs, ...) is installed)") from exc
        return self._fs

    def _remote(self, rel: str) -> str:
        self.fs  # noqa: B018 - resolves _fs_root
        rel = rel.strip("/")
        return f"{self._fs_root.rstrip('/')}/{rel}" if rel else self._fs_root

    def _call(self, what: str, rel: str, method: str, *args, deadline: float | None = None,
              attempt_timeout: float | None = None, **kwargs):
        """fs.<method>(*args) with retries; FileNotFoundError passes through for the caller to judge.

        ``deadline`` (monotonic) bounds all attempts, ``attempt_timeout`` each one; both only
        for async backends, whose sync wrappers (fsspec.asyn.mirror_sync_methods) take a
        ``timeout`` that cancels the call, the backend's own retries included."""
        fs = self.fs
        attempt = 0
        while True:
            limit = attempt_timeout
            if deadline is not None:
                left = max(0.1, deadline - time.monotonic())
                limit = left if limit is None else min(limit, left)
            if limit is not None and method in vars(fs):
                kwargs["timeout"] = limit
            try:
                return getattr(fs, method)(*args, **kwargs)
            except FileNotFoundError:
                raise
            except Exception as exc:  # fsspec backends raise many unrelated types
                delay = self.retry.delay(attempt)
                attempt += 1
                late = deadline is not None and time.monotonic() + delay >= deadline
                if not is_transient(exc) or attempt >= self.retry.attempts or late:
                    tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                    raise StorageError(f"{what} {self.url(rel)} failed{tries}: {describe(exc)}"
                                       + hint(exc, self.root)) from exc
                log.warning("%s %s failed: %s; transient, retry %d/%d in %.1fs", what, self.url(rel),
                            describe(exc), attempt, self.retry.attempts - 1, delay)
                self._sleep(delay)

    def _not_found(self, rel: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "no such file or object", self.url(rel))

    def _missing_bucket(self, what: str, rel: str, exc: BaseException) -> StorageError:
        return StorageError(f"{what} {self.url(rel)} failed: {describe(exc)}{hint(exc, self.root)}")

    # -- API ---------------------------------------------------------------
    def local_path(self, rel: str) -> str | None:
        return None

    def exists(self, rel: str) -> bool:
        self.fs.invalidate_cache()
        try:
            return bool(self._call("checking", rel, "exists", self._remote(rel)))
        except FileNotFoundError:
            return False

    def read_bytes(self, rel: str) -> bytes:
        try:
            return self._call("reading", rel, "cat_file", self._remote(rel))
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc

    def write_bytes(self, rel: str, data: bytes) -> None:
        try:
            self._call("writing", rel, "pipe_file", self._remote(rel), bytes(data),
                       attempt_timeout=self.retry.write_timeout(len(data)))
        except FileNotFoundError as exc:  # no such bucket
            raise self._missing_bucket("writing", rel, exc) from exc

    def _put(self, local_path: str, rel: str) -> None:
        try:
            self._call("uploading to", rel, "put_file", local_path, self._remote(rel),
                       attempt_timeout=self.retry.write_timeout(os.path.getsize(local_path)))
        except FileNotFoundError as exc:
            raise self._missing_bucket("uploading to", rel, exc) from exc

    def download(self, rel: str, local_path: str) -> None:
        directory = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(directory, exist_ok=True)
        tmp = tmp_name(local_path)
        try:
            self._call("downloading", rel, "get_file", self._remote(rel), tmp)
            os.replace(tmp, local_path)
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc
        finally:
            remove_quietly(tmp)

    def copy(self, src: str, dst: str) -> None:
        try:
            self._call("copying", src, "copy", self._remote(src), self._remote(dst))
        except FileNotFoundError as exc:
            raise self._not_found(src) from exc

    def listdir(self, rel: str = "") -> list[str]:
        self.fs.invalidate_cache()
        base = self._remote(rel).rstrip("/")
        try:
            entries = self._call("listing", rel, "ls", base, detail=False)
        except FileNotFoundError:
            return []
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base}
        return sorted(n for n in names if n)

    def remove_torn_writes(self, rel: str = "") -> list[str]:
        return []

    def delete(self, rel: str) -> None:
        try:
            self._call("deleting", rel, "rm_file", self._remote(rel))
        except FileNotFoundError:
            pass

    def size(self, rel: str) -> int:
        self.fs.invalidate_cache()
        try:
            return int(self._call("stat of", rel, "size", self._remote(rel)))
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc

    def _round_trip(self, rel: str, payload: bytes, timeout_s: float, prefix: str) -> bytes:
        deadline = time.monotonic() + timeout_s
        path = self._remote(rel)
        step = "writing"
        try:
            self._call(step, rel, "pipe_file", path, payload, deadline=deadline,
                       attempt_timeout=self.retry.write_timeout(len(payload)))
            step = "reading"
            data = self._call(step, rel, "cat_file", path, deadline=deadline)
            step = "deleting"
            self._call(step, rel, "rm_file", path, deadline=deadline)
        except FileNotFoundError as exc:
            raise StorageError(f"{prefix}: {step} {self.url(rel)} failed: {describe(exc)}"
                               f"{hint(exc, self.root)}") from exc
        except StorageError as exc:
            raise StorageError(f"{prefix}: {exc}") from exc
        return data

    def place(self) -> Place:
        protocol, _, rest = self.root.partition("://")
        if not rest.strip("/"):
            return Place(PlaceKind.NO_LOCATION, protocol)
        import fsspec
        if protocol not in fsspec.available_protocols():
            return Place(PlaceKind.UNKNOWN_PROTOCOL, protocol)
        return Place(PlaceKind.STORE)

    def check_reachable(self) -> None:
        self.probe()


def _strip_url(url: str) -> str:
    """Without trailing slashes, but a bare ``s3://`` stays as given (so errors can name it)."""
    stripped = url.rstrip("/")
    return url if stripped.endswith(":") else stripped


def _open_fs(root: str, options: dict):
    """(filesystem, path inside it) for a remote root; imports fsspec and the backend lazily."""
    protocol = root.split("://", 1)[0]
    if protocol in ("gs", "gcs"):
        os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # read when gcsfs is imported
        if os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"].lower() not in ("true", "1"):
            from gcsfs.core import GCSFileSystem  # the plain HTTP one, even if gcsfs was imported before
            return GCSFileSystem(**options), GCSFileSystem._strip_protocol(root)
    import fsspec
    return fsspec.core.url_to_fs(root, **options)
