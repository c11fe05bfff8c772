"""File access for a run directory: plain OS calls for local paths, fsspec for URLs.

A run directory may be a local path or any fsspec URL: ``gs://bucket/run``
(gcsfs), ``s3://bucket/run`` (s3fs), ``memory://run`` (tests). fsspec is only
imported for URLs. Options go to the fsspec filesystem (``--storage-options``
or ``$TRAINER_STORAGE_OPTIONS`` as JSON), e.g.

* S3-compatible endpoint: ``{"endpoint_url": "http://127.0.0.1:9000", "key": "...", "secret": "..."}``
  (or the usual ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``)
* GCS: ``{"project": "my-project", "token": "/path/key.json"}`` (or ``GOOGLE_APPLICATION_CREDENTIALS``);
  an emulator: ``{"endpoint_url": "http://127.0.0.1:9023", "token": "anon"}`` (or ``STORAGE_EMULATOR_HOST``)

Object stores have no atomic rename, and nothing here relies on one: each
object is written whole by a single put. Transient failures (timeouts,
connection resets, HTTP 5xx/408/429) are retried with bounded exponential
backoff; permanent ones (missing object, permission, credentials) are not.
"""
from __future__ import annotations

import errno
import logging
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from typing import Callable

log = logging.getLogger("trainer.storage")

_TRANSIENT_NAMES = ("Timeout", "ConnectionError", "ConnectorError", "ServerDisconnected",
                    "EndpointConnectionError", "ConnectionClosed", "ReadTimeout", "IncompleteRead",
                    "ResponseStreamingError")
_TRANSIENT_ERRNOS = {errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE,
                     errno.ECONNABORTED, errno.EAGAIN, errno.EHOSTUNREACH, errno.ENETUNREACH}


class StorageError(Exception):
    """Storage cannot be used; the message names the URL and says what to check."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** attempt)


def http_status(exc: BaseException) -> int | None:
    for attr in ("code", "status", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value < 600:
            return value
    response = getattr(exc, "response", None)
    if isinstance(response, dict):  # botocore ClientError
        return response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return None


def is_transient(exc: BaseException) -> bool:
    """Worth retrying: timeouts, dropped connections, HTTP 5xx, 408 and 429."""
    if isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
        return False
    status = http_status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if isinstance(exc, (TimeoutError, ConnectionError)):
        return True
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return True
    chain = [exc, exc.__cause__, exc.__context__]
    return any(e is not None and any(n in type(e).__name__ for n in _TRANSIENT_NAMES) for e in chain)


class Storage:
    def __init__(self, root: str, options: dict | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        self.is_remote = "://" in root and not root.startswith("file://")
        self.root = root.rstrip("/") if self.is_remote else os.path.abspath(root.removeprefix("file://"))
        self.options = dict(options or {})
        self.retry = retry
        self._sleep = sleep
        self._fs = None
        self._fs_root = ""

    # -- plumbing ----------------------------------------------------------
    @property
    def fs(self):
        if self._fs is None:
            import fsspec
            if self.root.startswith(("gs://", "gcs://")):
                # the emulator (and some networks) cannot do gcsfs's gRPC path
                os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
            self._fs, self._fs_root = fsspec.core.url_to_fs(self.root, **self.options)
        return self._fs

    def _remote(self, rel: str) -> str:
        self.fs  # noqa: B018 - resolves _fs_root
        return f"{self._fs_root}/{rel}".rstrip("/") if rel else self._fs_root

    def _local(self, rel: str) -> str:
        return os.path.join(self.root, rel) if rel else self.root

    def _call(self, what: str, rel: str, fn: Callable):
        for attempt in range(self.retry.attempts):
            try:
                return fn()
            except Exception as exc:  # fsspec backends raise many unrelated types
                if not is_transient(exc) or attempt == self.retry.attempts - 1:
                    if isinstance(exc, FileNotFoundError):
                        raise
                    raise StorageError(f"{what} {self.url(rel)} failed: {type(exc).__name__}: {exc}"
                                       + _hint(exc)) from exc
                delay = self.retry.delay(attempt)
                log.warning("%s %s: %s (transient, retry %d/%d in %.1fs)", what, self.url(rel),
                            type(exc).__name__, attempt + 1, self.retry.attempts - 1, delay)
                self._sleep(delay)

    # -- API ---------------------------------------------------------------
    def url(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str) -> str | None:
        return None if self.is_remote else self._local(rel)

    def exists(self, rel: str) -> bool:
        if not self.is_remote:
            return os.path.exists(self._local(rel))
        self.fs.invalidate_cache()
        return self._call("checking", rel, lambda: self.fs.exists(self._remote(rel)))

    def read_bytes(self, rel: str) -> bytes:
        if not self.is_remote:
            with open(self._local(rel), "rb") as fh:
                return fh.read()
        return self._call("reading", rel, lambda: self.fs.cat_file(self._remote(rel)))

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        if not self.is_remote:
            path = self._local(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data)
            return
        self._call("writing", rel, lambda: self.fs.pipe_file(self._remote(rel), data))

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def upload(self, local_path: str, rel: str) -> None:
        if not self.is_remote:
            target = self._local(rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            tmp = f"{target}.tmp-{os.getpid()}"
            shutil.copyfile(local_path, tmp)
            os.replace(tmp, target)
            return
        self._call("uploading to", rel, lambda: self.fs.put_file(local_path, self._remote(rel)))

    def download(self, rel: str, local_path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(local_path)), exist_ok=True)
        tmp = f"{local_path}.tmp-{os.getpid()}"
        if not self.is_remote:
            shutil.copyfile(self._local(rel), tmp)
        else:
            self._call("downloading", rel, lambda: self.fs.get_file(self._remote(rel), tmp))
        os.replace(tmp, local_path)

    def listdir(self, rel: str = "") -> list[str]:
        if not self.is_remote:
            try:
                return os.listdir(self._local(rel))
            except FileNotFoundError:
                return []
        self.fs.invalidate_cache()
        try:
            entries = self._call("listing", rel, lambda: self.fs.ls(self._remote(rel), detail=False))
        except FileNotFoundError:
            return []
        base = self._remote(rel).rstrip("/")
        return sorted({e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base})

    def delete(self, rel: str) -> None:
        if not self.is_remote:
            try:
                os.remove(self._local(rel))
            except FileNotFoundError:
                pass
            return
        try:
            self._call("deleting", rel, lambda: self.fs.rm_file(self._remote(rel)))
        except FileNotFoundError:
            pass

    def size(self, rel: str) -> int:
        if not self.is_remote:
            return os.path.getsize(self._local(rel))
        return int(self._call("stat of", rel, lambda: self.fs.size(self._remote(rel))))

    def probe(self) -> None:
        """Fail fast at start: write, read back and delete a small object."""
        rel = f".probe-{uuid.uuid4().hex[:12]}"
        payload = b"trainer write probe"
        try:
            self.write_bytes(rel, payload)
            if self.read_bytes(rel) != payload:
                raise StorageError(f"{self.url(rel)}: read back different bytes than written")
            self.delete(rel)
        except FileNotFoundError as exc:
            raise StorageError(f"cannot use {self.root}: {exc}" + _hint(exc)) from exc
        except StorageError as exc:
            raise StorageError(f"cannot use {self.root} as a run directory: {exc}") from exc


def atomic_write(path: str, data: bytes) -> None:
    """Write a local file so that readers see the old or the new content, never a torn one."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _hint(exc: BaseException) -> str:
    name = type(exc).__name__ + " " + str(exc)
    if "Credentials" in name or "credential" in name.lower():
        return " (hint: no credentials found; set AWS_*/GOOGLE_APPLICATION_CREDENTIALS or --storage-options)"
    if isinstance(exc, PermissionError) or http_status(exc) in (401, 403):
        return " (hint: permission denied; is the bucket read-only for these credentials?)"
    if isinstance(exc, FileNotFoundError) or http_status(exc) == 404 or "NoSuchBucket" in name:
        return " (hint: does the bucket exist?)"
    if is_transient(exc):
        return " (hint: endpoint unreachable or failing; check the URL, endpoint_url and the network)"
    return ""
