"""What a storage failure means: worth retrying or not, and what to tell the user.

fsspec backends raise many unrelated exception types (botocore, aiohttp, requests,
google-auth, plain ``OSError``), so the classification looks at the whole cause chain:
type names, HTTP statuses, service error codes and well-known phrases.
"""
from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import STORAGE_ERROR, TrainerError

_MIN_WRITE_RATE = float(1 << 20)  # bytes/s assumed at worst when bounding a remote write

# Exception type names (anywhere in the cause chain) that mean "try again".
_TRANSIENT_NAMES = ("Timeout", "ConnectionError", "ConnectorError", "ServerDisconnected", "ConnectionClosed",
                    "IncompleteRead", "ResponseStreamingError", "ClientPayloadError", "ProxyError",
                    "ChunkedEncodingError", "ChecksumError")
_AIOHTTP_PARSING = "aiohttp.http_exceptions"  # where aiohttp's errors in parsing an answer live
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


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 8:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status carried by ``exc`` or an exception it was raised from, if any. aiohttp's
    errors in parsing an answer (a body cut short, a broken chunk) carry the status a server
    would send for such a request (400): no status was received, so they have none."""
    for e in _chain(exc):
        if type(e).__module__ == _AIOHTTP_PARSING:
            continue
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


def hint(exc: BaseException, url: str = "") -> str:
    """' (hint: ...)' saying what to check for this failure at ``url``; '' when there is nothing to say."""
    if _is_credentials_error(exc):
        return _credentials_hint(_text(exc), url)
    if _is_forbidden(exc):
        if url and "://" not in url:
            return " (hint: permission denied; may this user create and delete files there?)"
        return (" (hint: permission denied; the credentials must be allowed to create, read and delete objects "
                "here: is the bucket read-only for them?)")
    if isinstance(exc, FileNotFoundError) or http_status(exc) == 404 or "NoSuchBucket" in _text(exc):
        return " (hint: not found; does the bucket exist? it is not created automatically)"
    if is_transient(exc):
        return (" (hint: endpoint unreachable or failing; check the URL, endpoint_url / AWS_ENDPOINT_URL / "
                "STORAGE_EMULATOR_HOST and the network)")
    return ""


def _credentials_hint(text: str, url: str) -> str:
    """Where each store looks for credentials: the fix differs per protocol."""
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


def describe(exc: BaseException) -> str:
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
