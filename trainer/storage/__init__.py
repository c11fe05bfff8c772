"""File access for a run directory: plain OS calls for local paths, fsspec for URLs.

One interface, :class:`Storage`, with a backend per kind of root chosen once by
:func:`open_storage`: :class:`LocalStorage` (``local.py``) and :class:`RemoteStorage`
(``remote.py``); what a failure means is decided in ``errors.py``, atomic local
writes are made in ``files.py``.

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

import time
from collections.abc import Callable

from .base import PROBE_TIMEOUT_S, Place, PlaceKind, Storage
from .errors import RetryPolicy, StorageError, http_status, is_transient
from .files import atomic_write
from .local import LocalStorage
from .remote import RemoteStorage

__all__ = ["PROBE_TIMEOUT_S", "LocalStorage", "Place", "PlaceKind", "RemoteStorage", "RetryPolicy", "Storage",
           "StorageError", "atomic_write", "http_status", "is_transient", "open_storage"]


def open_storage(root: str, options: dict | None = None, retry: RetryPolicy = RetryPolicy(),
                 sleep: Callable[[float], None] = time.sleep) -> Storage:
    """The backend for ``root``, chosen once: a local path (or ``file://`` path), or any fsspec
    URL. ``retry`` and ``sleep`` govern a remote backend's retries."""
    if "://" in root and not root.startswith("file://"):
        return RemoteStorage(root, options, retry, sleep)
    return LocalStorage(root, options)
