"""File access for a run directory: plain OS calls for local paths, fsspec for URLs.

A run directory is a local path (or ``file://`` path) or any fsspec URL:
``gs://bucket/run`` (gcsfs), ``s3://bucket/run`` (s3fs), ``memory://run``
(tests), or any other protocol fsspec knows. fsspec is imported only when a
remote root is first used; local roots never import it.

Storage options (``--storage-options`` / ``$TRAINER_STORAGE_OPTIONS`` as JSON)
are passed unchanged to the fsspec filesystem, e.g.

* S3 or an S3-compatible store (s3fs):
  ``{"endpoint_url": "http://127.0.0.1:9000", "key": "...", "secret": "..."}``;
  to make an unreachable endpoint fail within seconds add
  ``"config_kwargs": {"connect_timeout": 2, "read_timeout": 30, "retries": {"total_max_attempts": 2}}``.
  Instead of options the usual environment works: ``AWS_ENDPOINT_URL`` (or
  ``AWS_ENDPOINT_URL_S3``), ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
  ``AWS_SESSION_TOKEN``, ``AWS_PROFILE``, ``AWS_DEFAULT_REGION``, instance roles.
* GCS (gcsfs): ``{"project": "my-project", "token": "/path/key.json"}``; or
  ``GOOGLE_APPLICATION_CREDENTIALS=/path/key.json`` / ``gcloud auth
  application-default login`` / the VM's service account. Note that gcsfs
  silently falls back to anonymous access when it finds no credentials, so a
  missing key shows up as HTTP 401/403 from the bucket (the error says so).
  An emulator: ``{"endpoint_url": "http://127.0.0.1:9023", "token": "anon"}``
  or ``STORAGE_EMULATOR_HOST=http://127.0.0.1:9023`` with ``{"token": "anon"}``.

``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT`` defaults to ``false`` here: with it on,
newer gcsfs releases (2026.x here) ask a gRPC control API for every bucket's type,
which an emulator or a proxied network cannot answer (a 60 s stall per
bucket). Set it to ``true`` yourself to opt back in.

Semantics. Local writes go to a temporary file in the same directory, are
fsynced and renamed over the target (atomic). Object stores have no rename and
need none: each object is written whole by a single put and becomes visible
only when complete. Listings are never served from fsspec's cache.

Timeouts. Remote writes get a deadline per attempt (``RetryPolicy.write_timeout_s``,
60 s plus 1 s per MiB by default): s3fs PUTs to a store that stopped answering
otherwise hang forever. :meth:`Storage.probe` gives up after 30 s in all.

Errors. Transient failures (timeouts, refused/reset connections, HTTP 5xx, 408,
429, other I/O errors) are retried with bounded exponential backoff
(:class:`RetryPolicy`), on top of the backend's own retries, logging a warning
on ``trainer.storage`` per retry. Permanent ones (missing object, permission,
credentials, other HTTP 4xx) are not retried. Remote failures are raised as
:class:`StorageError` naming the URL with a hint, except that a missing object
stays :class:`FileNotFoundError` for ``read_bytes``/``read_text``/``size``/
``download``. Local operations raise the OS's own ``OSError`` (which names the
path), except :meth:`Storage.probe`, which always raises ``StorageError``.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ..errors import STORAGE_ERROR, TrainerError

log = logging.getLogger("trainer.storage")

PROBE_TIMEOUT_S = 30.0
_MIN_WRITE_RATE = float(1 << 20)  # bytes/s assumed at worst when bounding a remote write

# Exception type names (anywhere in the cause chain) that mean "try again".
_TRANSIENT_NAMES = ("Timeout", "ConnectionError", "ConnectorError", "ServerDisconnected", "ConnectionClosed",
                    "IncompleteRead", "ResponseStreamingError", "ClientPayloadError", "ProxyError",
                    "ChunkedEncodingError", "ChecksumError")
# Local-side errnos that no retry can fix (e.g. a full disk under download()).
_PERMANENT_ERRNOS = {getattr(errno, name) for name in (
    "ENOENT", "EACCES", "EPERM", "ENOSPC", "EDQUOT", "EROFS", "EINVAL", "ENAMETOOLONG", "EISDIR", "ENOTDIR",
    "EEXIST", "ENOTEMPTY", "EMSGSIZE", "ENOSYS", "EREMCHG") if hasattr(errno, name)}
_PERMANENT_TYPES = (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
# Missing or rejected credentials: exception type names, and error codes/phrases in messages.
_CREDENTIAL_TYPES = ("Credentials", "RefreshError")
_CREDENTIAL_PHRASES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
                       "Anonymous caller", "Unable to locate credentials", "Invalid Credentials")


class StorageError(TrainerError, exit_code=STORAGE_ERROR):
    """Storage cannot be used; the message names the URL and says what to check."""


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff: ``attempts`` tries in all, waiting
    ``base_delay_s * 2**n`` (at most ``max_delay_s``) after the n-th failure.

    ``write_timeout_s`` bounds one attempt of a remote write (plus 1 s per MiB
    written); None: unbounded. It is needed because an s3fs PUT to a store that
    accepts connections but stops answering hangs forever, whatever botocore's
    ``read_timeout`` says (reads, listings and deletes do honour it)."""
    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0
    write_timeout_s: float | None = 60.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay_s, self.base_delay_s * 2 ** attempt)

    def write_timeout(self, nbytes: int) -> float | None:
        return None if self.write_timeout_s is None else self.write_timeout_s + nbytes / _MIN_WRITE_RATE


# -- error classification ----------------------------------------------------
def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` or an exception it was raised from, if any."""
    for e in _chain(exc):
        for attr in ("code", "status", "status_code"):
            value = getattr(e, attr, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                return value
        response = getattr(e, "response", None)
        if isinstance(response, dict):  # botocore ClientError
            value = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(value, int):
                return value
        elif isinstance(getattr(response, "status_code", None), int):  # requests
            return response.status_code
    return None


def _text(exc: BaseException) -> str:
    return " | ".join(f"{type(e).__name__}: {e}" for e in _chain(exc))


def _is_credentials_error(exc: BaseException) -> bool:
    return (http_status(exc) == 401
            or any(t in type(e).__name__ for e in _chain(exc) for t in _CREDENTIAL_TYPES)
            or any(p in _text(exc) for p in _CREDENTIAL_PHRASES))


def _is_forbidden(exc: BaseException) -> bool:
    # gcsfs turns HTTP 403 into a plain OSError("Forbidden: ...") without the status
    return (isinstance(exc, PermissionError) or http_status(exc) == 403
            or any(isinstance(e, OSError) and str(e).startswith("Forbidden") for e in _chain(exc))
            or "AccessDenied" in _text(exc))


def is_transient(exc: BaseException) -> bool:
    """Worth retrying? Timeouts, dropped/refused connections, HTTP 5xx/408/429 and
    I/O errors not known to be permanent: yes. Missing objects, permission and
    credential problems, other HTTP 4xx, programming errors: no."""
    if isinstance(exc, _PERMANENT_TYPES) or _is_credentials_error(exc) or _is_forbidden(exc):
        return False
    if any(isinstance(e, (TimeoutError, ConnectionError)) for e in _chain(exc)):
        return True  # before the status: S3's RequestTimeout is an HTTP 400
    status = http_status(exc)
    if status is not None:
        return status >= 500 or status in (408, 429)
    if any(name in type(e).__name__ for e in _chain(exc) for name in _TRANSIENT_NAMES):
        return True
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return False


def _hint(exc: BaseException, url: str = "") -> str:
    text = _text(exc)
    if _is_credentials_error(exc):
        what = "no credentials found" if "NoCredentials" in text or "DefaultCredentials" in text else \
            "credentials rejected"
        if url.startswith(("gs://", "gcs://")):
            how = ("set GOOGLE_APPLICATION_CREDENTIALS or the storage option token (gcsfs falls back to "
                   "anonymous access when it finds no credentials)")
        elif url.startswith("s3://"):
            how = "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE, or key/secret in --storage-options"
        else:
            how = "check the credentials in the environment or in --storage-options"
        return f" (hint: {what}; {how})"
    if _is_forbidden(exc):
        if url and "://" not in url:
            return " (hint: permission denied; may this user create and delete files there?)"
        return (" (hint: permission denied; the credentials must be allowed to create, read and delete objects "
                "here: is the bucket read-only for them?)")
    if isinstance(exc, FileNotFoundError) or http_status(exc) == 404 or "NoSuchBucket" in text:
        return " (hint: not found; does the bucket exist? it is not created automatically)"
    if is_transient(exc):
        return (" (hint: endpoint unreachable or failing; check the URL, endpoint_url / AWS_ENDPOINT_URL / "
                "STORAGE_EMULATOR_HOST and the network)")
    return ""


def _describe(exc: BaseException) -> str:
    """'Type [ServiceCode, HTTP 403]: message' for the error and what it was raised from."""
    details = []
    for e in _chain(exc):
        response = getattr(e, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            details.append(response["Error"]["Code"])  # botocore's error code, e.g. AccessDenied
            break
    status = http_status(exc)
    if status is not None:
        details.append(f"HTTP {status}")
    name = type(exc).__name__ + (f" [{', '.join(details)}]" if details else "")
    return f"{name}: {exc}" if str(exc) else f"{name} (no answer in time)"


# -- the storage seam ----------------------------------------------------------
class Storage:
    def __init__(self, root: str, options: dict | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep):
        self.is_remote = "://" in root and not root.startswith("file://")
        self.root = _strip_url(root) if self.is_remote else os.path.abspath(root.removeprefix("file://"))
        self.options = dict(options or {})
        self.retry = retry
        self._sleep = sleep
        self._fs = None
        self._fs_root = ""
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"Storage({self.root!r})"

    # -- plumbing ----------------------------------------------------------
    @property
    def fs(self):
        """The fsspec filesystem (remote roots only; created on first use)."""
        if self._fs is None:
            with self._lock:
                if self._fs is None:
                    try:
                        self._fs, self._fs_root = _open_fs(self.root, self.options)
                    except Exception as exc:  # unknown protocol, missing package, bad options or key file
                        raise StorageError(f"cannot open {self.root} with options {sorted(self.options)}: "
                                           f"{_describe(exc)} (hint: check the URL, the storage options and "
                                           "that the fsspec backend (s3fs, gcsfs, ...) is installed)") from exc
        return self._fs

    def _rel(self, rel: str) -> str:
        return rel.strip("/")

    def _remote(self, rel: str) -> str:
        self.fs  # noqa: B018 - resolves _fs_root
        rel = self._rel(rel)
        return f"{self._fs_root.rstrip('/')}/{rel}" if rel else self._fs_root

    def _local(self, rel: str) -> str:
        rel = self._rel(rel)
        return os.path.join(self.root, rel) if rel else self.root

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
                    raise StorageError(f"{what} {self.url(rel)} failed{tries}: {_describe(exc)}"
                                       + _hint(exc, self.root)) from exc
                log.warning("%s %s failed: %s; transient, retry %d/%d in %.1fs", what, self.url(rel),
                            _describe(exc), attempt, self.retry.attempts - 1, delay)
                self._sleep(delay)

    def _not_found(self, rel: str) -> FileNotFoundError:
        return FileNotFoundError(errno.ENOENT, "no such file or object", self.url(rel))

    def _missing_bucket(self, what: str, rel: str, exc: BaseException) -> StorageError:
        return StorageError(f"{what} {self.url(rel)} failed: {_describe(exc)}{_hint(exc, self.root)}")

    # -- API ---------------------------------------------------------------
    def url(self, rel: str) -> str:
        """The root joined with a '/'-separated relative path."""
        rel = self._rel(rel)
        return f"{self.root}/{rel}" if rel else self.root

    def local_path(self, rel: str) -> str | None:
        """The real filesystem path for local roots; None for remote ones."""
        return None if self.is_remote else self._local(rel)

    def exists(self, rel: str) -> bool:
        if not self.is_remote:
            return os.path.exists(self._local(rel))
        self.fs.invalidate_cache()
        try:
            return bool(self._call("checking", rel, "exists", self._remote(rel)))
        except FileNotFoundError:
            return False

    def read_bytes(self, rel: str) -> bytes:
        """Raises FileNotFoundError (naming the URL) if there is no such file."""
        if not self.is_remote:
            with open(self._local(rel), "rb") as fh:
                return fh.read()
        try:
            return self._call("reading", rel, "cat_file", self._remote(rel))
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc

    def read_text(self, rel: str) -> str:
        return self.read_bytes(rel).decode()

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Replace the file whole: readers see the old or the new content, never a mix."""
        if not self.is_remote:
            path = self._local(rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            atomic_write(path, data)
            return
        try:
            self._call("writing", rel, "pipe_file", self._remote(rel), bytes(data),
                       attempt_timeout=self.retry.write_timeout(len(data)))
        except FileNotFoundError as exc:  # no such bucket
            raise self._missing_bucket("writing", rel, exc) from exc

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def upload(self, local_path: str, rel: str) -> None:
        """Copy a local file to ``rel`` (atomically for local roots, as one object for remote ones)."""
        if not os.path.isfile(local_path):
            raise FileNotFoundError(errno.ENOENT, "no such file to upload", local_path)
        if not self.is_remote:
            target = self._local(rel)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            _atomic_copy(local_path, target)
            return
        try:
            self._call("uploading to", rel, "put_file", local_path, self._remote(rel),
                       attempt_timeout=self.retry.write_timeout(os.path.getsize(local_path)))
        except FileNotFoundError as exc:
            raise self._missing_bucket("uploading to", rel, exc) from exc

    def download(self, rel: str, local_path: str) -> None:
        """Copy ``rel`` to a local file via a temporary file and a rename."""
        if not self.is_remote:
            _atomic_copy(self._local(rel), local_path)
            return
        directory = os.path.dirname(os.path.abspath(local_path))
        os.makedirs(directory, exist_ok=True)
        tmp = _tmp_name(local_path)
        try:
            self._call("downloading", rel, "get_file", self._remote(rel), tmp)
            os.replace(tmp, local_path)
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc
        finally:
            _remove_quietly(tmp)

    def copy(self, src: str, dst: str) -> None:
        """Copy the file ``src`` to ``dst`` inside the run dir (atomically for local roots)."""
        if not self.is_remote:
            _atomic_copy(self._local(src), self._local(dst))
            return
        try:
            self._call("copying", src, "copy", self._remote(src), self._remote(dst))
        except FileNotFoundError as exc:
            raise self._not_found(src) from exc

    def listdir(self, rel: str = "") -> list[str]:
        """Sorted base names of the direct children; [] if there is no such directory."""
        if not self.is_remote:
            try:
                return sorted(os.listdir(self._local(rel)))
            except (FileNotFoundError, NotADirectoryError):
                return []
        self.fs.invalidate_cache()
        base = self._remote(rel).rstrip("/")
        try:
            entries = self._call("listing", rel, "ls", base, detail=False)
        except FileNotFoundError:
            return []
        names = {e.rstrip("/").rsplit("/", 1)[-1] for e in entries if e.rstrip("/") != base}
        return sorted(n for n in names if n)

    def remove_torn_writes(self, rel: str = "") -> list[str]:
        """Delete the temporary files that writers killed inside an atomic write left in
        ``rel`` (local only: a remote write is one PUT). Files of live processes stay."""
        if self.is_remote:
            return []
        torn = [n for n in self.listdir(rel) if _writer_gone(n)]
        for name in torn:
            _remove_quietly(self._local(os.path.join(rel, name)))
        return torn

    def delete(self, rel: str) -> None:
        """Delete a file; a missing one is not an error."""
        if not self.is_remote:
            try:
                os.remove(self._local(rel))
            except FileNotFoundError:
                pass
            return
        try:
            self._call("deleting", rel, "rm_file", self._remote(rel))
        except FileNotFoundError:
            pass

    def size(self, rel: str) -> int:
        """Size in bytes; FileNotFoundError if there is no such file."""
        if not self.is_remote:
            return os.path.getsize(self._local(rel))
        self.fs.invalidate_cache()
        try:
            return int(self._call("stat of", rel, "size", self._remote(rel)))
        except FileNotFoundError as exc:
            raise self._not_found(rel) from exc

    def probe(self, timeout_s: float = PROBE_TIMEOUT_S) -> None:
        """Fail fast at start: write, read back and delete a small ``.probe-*`` object.

        Raises StorageError with a hint for missing/rejected credentials, a
        read-only bucket, a missing bucket or an unreachable endpoint. Remote
        probes give up after ``timeout_s`` in all (backends' own retries included).
        """
        rel = f".probe-{uuid.uuid4().hex[:12]}"
        payload = b"trainer storage probe\n"
        prefix = f"cannot use {self.root} as a run directory"
        if not self.is_remote:
            try:
                self.write_bytes(rel, payload)
                ok = self.read_bytes(rel) == payload
                self.delete(rel)
            except OSError as exc:
                raise StorageError(f"{prefix}: {_describe(exc)}{_hint(exc, self.root)}") from exc
            if not ok:
                raise StorageError(f"{prefix}: {self.url(rel)} read back different bytes than written")
            return
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
            raise StorageError(f"{prefix}: {step} {self.url(rel)} failed: {_describe(exc)}"
                               f"{_hint(exc, self.root)}") from exc
        except StorageError as exc:
            raise StorageError(f"{prefix}: {exc}") from exc
        if data != payload:
            raise StorageError(f"{prefix}: {self.url(rel)} read back different bytes than written")


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


# -- local helpers ---------------------------------------------------------------
def _tmp_name(path: str) -> str:
    # ".tmp-" marks leftovers for checkpoints_index.leftovers(); unique per process and thread
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _writer_gone(name: str) -> bool:
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


def _remove_quietly(path: str) -> None:
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
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write(path: str, data: bytes) -> None:
    """Write a local file so that readers see the old or the new content, never a torn one."""
    with _replacing(path) as fh:
        fh.write(data)


def _atomic_copy(src: str, dst: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(dst)), exist_ok=True)
    with open(src, "rb") as fin, _replacing(dst) as fout:
        shutil.copyfileobj(fin, fout, 1 << 20)
