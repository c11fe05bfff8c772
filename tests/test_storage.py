"""The storage seam against local dirs, memory://, a real S3 (moto) and a real GCS emulator.

Failure modes: unreachable endpoints (a closed port), missing buckets, read-only and
invalid credentials (moto with IAM enforced) and missing credentials are real; GCS 401/403
come from a stub HTTP server speaking the GCS JSON error format to the real gcsfs client
(the emulator has no auth); HTTP 5xx on S3 come from a stub proxy in front of moto; a hung
store is a socket that accepts connections and never answers; everything else transient is
injected with a flaky in-memory fsspec filesystem.
"""
from __future__ import annotations

import errno
import logging
import os
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.emulators import (
    _boto3,
    _bucket_name,
    _free_port,
    create_gcs_bucket,
    gcs_error_body,
    s3_error_body,
    s3_options,
)
from trainer.storage import (
    LocalStorage,
    RemoteStorage,
    RetryPolicy,
    StorageError,
    http_status,
    is_transient,
    open_storage,
)

ROOT = Path(__file__).resolve().parents[1]
BACKENDS = ["local", "memory", "s3", "gcs"]
NO_SLEEP = {"sleep": lambda s: None}
FAST_S3 = {"connect_timeout": 2, "read_timeout": 5, "retries": {"total_max_attempts": 1}}  # botocore: no own retries

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(params=BACKENDS)
def store(request, tmp_path):
    kind = request.param
    if kind == "local":
        yield open_storage(str(tmp_path / "run"))
    elif kind == "memory":
        root = f"memory://test-{_bucket_name()}/run"
        yield open_storage(root)
        import fsspec
        fs = fsspec.filesystem("memory")
        if fs.exists(root):
            fs.rm(root, recursive=True)
    else:
        url, options = request.getfixturevalue("s3_run_root" if kind == "s3" else "gcs_run_root")
        yield open_storage(url, options)


def _no_temp_files(directory) -> bool:
    return not [p for p in Path(directory).rglob("*") if ".tmp-" in p.name]


# -- behaviour on every backend ------------------------------------------------------------
def test_round_trip(store):
    store.write_bytes("a/b/data.bin", bytes(range(256)) * 10)
    assert store.read_bytes("a/b/data.bin") == bytes(range(256)) * 10
    store.write_text("note.txt", "first ✓")
    store.write_text("note.txt", "second ✓")  # overwrite
    assert store.read_text("note.txt") == "second ✓"
    assert store.exists("note.txt") and store.exists("a/b/data.bin") and not store.exists("nope.txt")
    assert store.size("a/b/data.bin") == 2560
    store.write_bytes("empty", b"")
    assert store.read_bytes("empty") == b"" and store.size("empty") == 0


def test_listdir_gives_direct_children_only(store):
    assert store.listdir() == []  # the run dir does not exist yet
    for rel in ("a.txt", "sub/b.txt", "sub/deep/c.txt"):
        store.write_text(rel, rel)
    assert store.listdir() == ["a.txt", "sub"]
    assert store.listdir("sub") == ["b.txt", "deep"]
    assert store.listdir("sub/deep") == ["c.txt"]
    assert store.listdir("nope") == [] and store.listdir("a.txt") == []


def test_delete(store):
    store.write_text("d/x", "1")
    store.write_text("d/y", "2")
    store.delete("d/x")
    store.delete("d/x")  # missing is fine
    store.delete("never/was")
    assert not store.exists("d/x") and store.exists("d/y")
    assert store.listdir("d") == ["y"]


def test_missing_objects_raise_file_not_found_naming_the_url(store, tmp_path):
    for call in (lambda: store.read_bytes("no/such"), lambda: store.read_text("no/such"),
                 lambda: store.size("no/such"), lambda: store.download("no/such", str(tmp_path / "dl" / "f"))):
        with pytest.raises(FileNotFoundError) as info:
            call()
        assert str(info.value).endswith(repr(store.url("no/such")))
    assert not (tmp_path / "dl" / "f").exists() and _no_temp_files(tmp_path)


def test_upload_download(store, tmp_path):
    payload = os.urandom(300_000)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    store.upload(str(src), "ckpt/model.data")
    assert store.size("ckpt/model.data") == len(payload) and store.listdir("ckpt") == ["model.data"]
    out = tmp_path / "fresh" / "dir" / "model.data"
    store.download("ckpt/model.data", str(out))
    assert out.read_bytes() == payload
    out.write_bytes(b"old")
    store.download("ckpt/model.data", str(out))  # replaces
    assert out.read_bytes() == payload
    assert _no_temp_files(tmp_path)
    with pytest.raises(FileNotFoundError):
        store.upload(str(tmp_path / "missing.bin"), "x")


def test_probe_succeeds_and_leaves_nothing(store):
    store.probe()
    assert not [n for n in store.listdir() if n.startswith(".probe-")]


def test_listings_see_changes_made_by_another_client(store):
    """fsspec caches listings per filesystem instance; changes from elsewhere must show."""
    assert store.listdir("shared") == [] and not store.exists("shared/x")
    if store.local_path("") is None:  # an object store
        other = type(store.fs)(skip_instance_cache=True, **store.options)
        path = other._strip_protocol(store.url("shared/x"))
        other.pipe_file(path, b"from elsewhere")
        def remove():
            other.rm_file(path)
    else:
        path = Path(store.local_path("shared/x"))
        path.parent.mkdir(parents=True)
        path.write_bytes(b"from elsewhere")
        remove = path.unlink
    assert store.listdir("shared") == ["x"] and store.exists("shared/x")
    assert store.size("shared/x") == len(b"from elsewhere")
    remove()
    assert store.listdir("shared") == [] and not store.exists("shared/x")


def test_url_and_local_path(tmp_path, s3_run_root):
    local = open_storage(str(tmp_path / "run"))
    assert isinstance(local, LocalStorage) and local.url("a/b.txt") == str(tmp_path / "run" / "a" / "b.txt")
    assert local.local_path("a/b.txt") == str(tmp_path / "run" / "a" / "b.txt") and local.local_path("") == local.root
    assert open_storage(f"file://{tmp_path}/run/").root == str(tmp_path / "run")
    url, options = s3_run_root
    remote = open_storage(url + "/", options)
    assert isinstance(remote, RemoteStorage) and remote.root == url and remote.local_path("a") is None
    assert remote.url("a/b.txt") == f"{url}/a/b.txt" and remote.url("") == url
    assert open_storage("memory://x/y").url("z") == "memory://x/y/z"


# -- local specifics ---------------------------------------------------------------------
def test_local_roots_do_not_import_fsspec(tmp_path):
    code = ("import sys; from trainer.storage import open_storage; s = open_storage(sys.argv[1]); s.probe(); "
            "s.write_text('a/b', 'x'); s.upload(sys.argv[1] + '/a/b', 'c'); s.download('c', sys.argv[1] + '/d'); "
            "assert s.listdir('') == ['a', 'c', 'd'] and s.read_text('d') == 'x'; "
            "bad = [m for m in ('fsspec', 's3fs', 'gcsfs', 'botocore') if m in sys.modules]; assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "run")], check=False, cwd=ROOT,
                            capture_output=True, text=True, timeout=30, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0, result.stderr


def test_local_write_is_atomic_and_cleans_up(tmp_path, monkeypatch):
    store = open_storage(str(tmp_path / "run"))
    store.write_text("state.json", "old")
    real_fsync = os.fsync

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(OSError, match="No space left"):
        store.write_text("state.json", "new")
    with pytest.raises(OSError, match="No space left"):
        store.upload(str(tmp_path / "run" / "state.json"), "copy.json")
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert store.read_text("state.json") == "old" and store.listdir() == ["state.json"]


def test_local_readers_never_see_a_torn_file(tmp_path):
    store = open_storage(str(tmp_path / "run"))
    a, b = b"a" * 300_000, b"b" * 300_000
    store.write_bytes("f", a)
    stop, seen = threading.Event(), Counter()

    def reader():
        while not stop.is_set():
            data = store.read_bytes("f")
            seen["ok" if data in (a, b) else "torn"] += 1
    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for i in range(40):
            store.write_bytes("f", b if i % 2 == 0 else a)
    finally:
        stop.set()
        thread.join()
    assert seen["torn"] == 0 and seen["ok"] > 0
    assert store.listdir() == ["f"]


def test_local_probe_failure_is_a_storage_error(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StorageError, match="cannot use .*file/run as a run directory"):
        open_storage(str(tmp_path / "file" / "run")).probe()


# -- remote failure modes (real servers) ------------------------------------------------------
@pytest.mark.parametrize("kind", ["s3-low-timeouts", "s3-defaults", "gcs-defaults"])
def test_probe_unreachable_endpoint_fails_fast(kind):
    endpoint = f"http://127.0.0.1:{_free_port()}"  # nothing listens there: connection refused
    timeout = 2.0
    if kind == "s3-low-timeouts":  # how a user makes s3fs give up quickly on its own
        storage = open_storage("s3://bucket/run", s3_options(endpoint, config_kwargs={
            "connect_timeout": 1, "read_timeout": 1, "retries": {"total_max_attempts": 1}}),
            retry=RetryPolicy(attempts=3, base_delay_s=0.05))
        timeout = 30.0
    elif kind == "s3-defaults":  # botocore retries with backoff; the probe's deadline cuts it short
        storage = open_storage("s3://bucket/run", s3_options(endpoint))
    else:  # gcsfs retries 6 times with 1..16 s backoff (~30 s) and cannot be told otherwise
        storage = open_storage("gs://bucket/run", {"endpoint_url": endpoint, "token": "anon"})
    start = time.monotonic()
    with pytest.raises(StorageError, match="endpoint unreachable") as info:
        storage.probe(timeout_s=timeout)
    assert time.monotonic() - start < 5
    assert str(info.value).startswith(f"cannot use {storage.root} as a run directory: writing {storage.root}/.probe-")


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_writes_to_a_hung_store_time_out(kind, frozen_endpoint):
    """s3fs PUTs ignore botocore's read_timeout when the server never answers; the write deadline does not."""
    options = (s3_options(frozen_endpoint, config_kwargs=FAST_S3) if kind == "s3"
               else {"endpoint_url": frozen_endpoint, "token": "anon"})
    storage = open_storage(f"{'s3' if kind == 's3' else 'gs'}://bucket/run", options,
                      retry=RetryPolicy(attempts=2, base_delay_s=0.01, write_timeout_s=1.0))
    start = time.monotonic()
    with pytest.raises(StorageError, match=r"writing \S+/run/a.txt failed \(after 2 attempts\): FSTimeoutError"):
        storage.write_text("a.txt", "x")
    assert time.monotonic() - start < 5
    with pytest.raises(StorageError, match="uploading to"):
        storage.upload(__file__, "b.py")


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_probe_missing_bucket(kind, request):
    server = request.getfixturevalue(f"{kind}_server")
    url, options = ((f"s3://{_bucket_name()}/run", s3_options(server)) if kind == "s3" else
                    (f"gs://{_bucket_name()}/run", {"endpoint_url": server, "token": "anon"}))
    storage = open_storage(url, options, **NO_SLEEP)
    with pytest.raises(StorageError, match="does the bucket exist") as info:
        storage.probe()
    assert url in str(info.value)
    assert storage.listdir() == [] and not storage.exists("x")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("x")
    with pytest.raises(StorageError, match="does the bucket exist"):
        storage.write_text("x", "y")


def test_probe_read_only_bucket(s3_read_only_root, caplog):
    url, options = s3_read_only_root
    storage = open_storage(url, options, **NO_SLEEP)
    # the credentials are valid: reading works. (Listing is not checked here: moto's IAM mode recomputes
    # the signature from the raw query string, which aiohttp normalises, so any s3fs listing fails there
    # with SignatureDoesNotMatch; real S3 does not have this problem.)
    assert storage.read_text("existing.txt") == "hello"
    with pytest.raises(StorageError, match="permission denied.*read-only") as info:
        storage.probe()
    assert "AccessDenied" in str(info.value) and url in str(info.value)
    for call in (lambda: storage.write_text("x", "y"), lambda: storage.delete("existing.txt")):
        with pytest.raises(StorageError, match="permission denied"):
            call()
    assert not [r for r in caplog.records if r.name == "trainer.storage"]  # nothing was retried


def test_probe_invalid_credentials(s3_iam_server, s3_read_only_root):
    url, _ = s3_read_only_root
    storage = open_storage(url, s3_options(s3_iam_server["endpoint"], "AKIANOSUCHKEY0000000", "wrong"), **NO_SLEEP)
    with pytest.raises(StorageError, match=r"InvalidAccessKeyId, HTTP 403.*credentials rejected; set AWS_ACCESS"):
        storage.probe()


def test_probe_missing_credentials(s3_server, monkeypatch):
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
    storage = open_storage(f"s3://{_bucket_name()}/run", {"endpoint_url": s3_server}, **NO_SLEEP)
    with pytest.raises(StorageError, match="NoCredentialsError.*no credentials found"):
        storage.probe()


@pytest.mark.parametrize("status,message,hint", [
    (403, "reader@p.iam.gserviceaccount.com does not have storage.objects.create access.", "permission denied"),
    (401, "Anonymous caller does not have storage.objects.create access to the Google Cloud Storage object.",
     "credentials rejected; set GOOGLE_APPLICATION_CREDENTIALS"),
], ids=["403", "401"])
def test_gcs_auth_errors_are_permanent(http_stub, status, message, hint):
    stub = http_stub(status, gcs_error_body(status, message))
    storage = open_storage("gs://bucket/run", {"endpoint_url": stub.url, "token": "anon"}, **NO_SLEEP)
    with pytest.raises(StorageError, match=hint):
        storage.probe()
    assert stub.requests == 1  # neither gcsfs nor we retried


def test_transient_http_errors_are_retried_by_a_real_client(s3_server, http_stub, caplog):
    bucket = _bucket_name()
    _boto3("s3", s3_server).create_bucket(Bucket=bucket)
    stub = http_stub(503, s3_error_body("ServiceUnavailable", "Service is unable to handle request."),
                     content_type="application/xml", fail_first=2, upstream=s3_server)
    sleeps = []
    storage = open_storage(f"s3://{bucket}/run", s3_options(stub.url, config_kwargs=FAST_S3),
                      retry=RetryPolicy(attempts=4, base_delay_s=0.5), sleep=sleeps.append)
    storage.write_text("a.txt", "survived")
    assert sleeps == [0.5, 1.0] and stub.requests == 3
    warnings = [r.getMessage() for r in caplog.records if r.name == "trainer.storage"]
    assert len(warnings) == 2 and all(f"s3://{bucket}/run/a.txt" in w and "transient" in w for w in warnings)
    assert storage.read_text("a.txt") == "survived"


@pytest.mark.parametrize("status,code", [(400, "InvalidArgument"), (403, "AccessDenied"), (404, "NoSuchBucket")])
def test_permanent_http_errors_are_not_retried_by_a_real_client(http_stub, status, code):
    stub = http_stub(status, s3_error_body(code, "no"), content_type="application/xml")
    sleeps = []
    storage = open_storage("s3://bucket/run", s3_options(stub.url, config_kwargs=FAST_S3), sleep=sleeps.append)
    with pytest.raises(StorageError, match=code):
        storage.write_text("a.txt", "x")
    assert sleeps == [] and stub.requests == 1


# -- configuration -------------------------------------------------------------------------
def test_s3_from_environment_variables(s3_run_root, monkeypatch):
    url, options = s3_run_root
    monkeypatch.setenv("AWS_ENDPOINT_URL", options["endpoint_url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    storage = open_storage(url)
    storage.probe()
    storage.write_text("env.txt", "via env")
    assert open_storage(url, options).read_text("env.txt") == "via env"


def test_gcs_from_environment_variable_and_plain_http_client(gcs_server, monkeypatch):
    import gcsfs.core
    bucket = _bucket_name()
    create_gcs_bucket(gcs_server, bucket)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server)
    storage = open_storage(f"gs://{bucket}/run", {"token": "anon"})
    storage.probe()
    assert type(storage.fs) is gcsfs.core.GCSFileSystem  # not the gRPC-first ExtendedGcsFileSystem
    assert os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"].lower() in ("false", "0", "true", "1")


def test_unknown_protocol_is_a_storage_error():
    with pytest.raises(StorageError, match="cannot open nosuchproto://x/run"):
        open_storage("nosuchproto://x/run").exists("a")


# -- retry logic with a flaky in-memory filesystem ---------------------------------------------
def _flaky_fs_class():
    import fsspec
    from fsspec.implementations.memory import MemoryFileSystem

    class FlakyFS(MemoryFileSystem):
        """memory:// whose next outer calls raise the queued ``errors``."""
        protocol = "flaky"
        cachable = False
        store, pseudo_dirs = {}, [""]

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.errors, self.calls, self._depth = [], Counter(), 0

        @classmethod
        def _strip_protocol(cls, path):
            return super()._strip_protocol(path.removeprefix("flaky://"))

    def wrap(name):
        def method(self, *args, **kwargs):
            if self._depth == 0:
                self.calls[name] += 1
                if self.errors:
                    raise self.errors.pop(0)
            self._depth += 1
            try:
                return getattr(MemoryFileSystem, name)(self, *args, **kwargs)
            finally:
                self._depth -= 1
        return method

    for name in ("pipe_file", "cat_file", "put_file", "get_file", "ls", "exists", "rm_file", "size"):
        setattr(FlakyFS, name, wrap(name))
    fsspec.register_implementation("flaky", FlakyFS, clobber=True)
    return FlakyFS


@pytest.fixture
def flaky(tmp_path):
    """(storage on flaky://, its fs, recorded sleeps) with ``a.txt`` already written."""
    _flaky_fs_class().store.clear()
    sleeps = []
    storage = open_storage(f"flaky://{_bucket_name()}/run", retry=RetryPolicy(attempts=3, base_delay_s=0.5,
                                                                         max_delay_s=0.75), sleep=sleeps.append)
    storage.write_text("a.txt", "hello")
    src = tmp_path / "src"
    src.write_text("up")
    storage.fs.calls.clear()
    return storage, storage.fs, sleeps


OPS = {
    "write_bytes": ("pipe_file", lambda s, tmp: s.write_bytes("b.txt", b"x")),
    "read_bytes": ("cat_file", lambda s, tmp: s.read_bytes("a.txt")),
    "exists": ("exists", lambda s, tmp: s.exists("a.txt")),
    "listdir": ("ls", lambda s, tmp: s.listdir("")),
    "size": ("size", lambda s, tmp: s.size("a.txt")),
    "delete": ("rm_file", lambda s, tmp: s.delete("a.txt")),
    "upload": ("put_file", lambda s, tmp: s.upload(str(tmp / "src"), "up.txt")),
    "download": ("get_file", lambda s, tmp: s.download("a.txt", str(tmp / "down.txt"))),
}


@pytest.mark.parametrize("op", OPS)
def test_two_transient_failures_then_success(flaky, op, tmp_path, caplog):
    storage, fs, sleeps = flaky
    method, call = OPS[op]
    fs.errors = [ConnectionResetError(errno.ECONNRESET, "reset by peer"), TimeoutError("read timed out")]
    call(storage, tmp_path)
    assert fs.calls[method] == 3 and sleeps == [0.5, 0.75]
    warnings = [r for r in caplog.records if r.name == "trainer.storage" and r.levelno == logging.WARNING]
    assert len(warnings) == 2 and "retry 1/2" in warnings[0].getMessage() and "retry 2/2" in warnings[1].getMessage()
    assert _no_temp_files(tmp_path)


@pytest.mark.parametrize("op", OPS)
def test_permanent_failure_is_not_retried(flaky, op, tmp_path):
    storage, fs, sleeps = flaky
    method, call = OPS[op]
    fs.errors = [PermissionError(errno.EACCES, "AccessDenied")]
    with pytest.raises(StorageError, match=r"flaky://.*failed: PermissionError.*hint: permission denied"):
        call(storage, tmp_path)
    assert fs.calls[method] == 1 and sleeps == []
    assert _no_temp_files(tmp_path)


def test_retries_are_bounded(flaky):
    storage, fs, sleeps = flaky
    fs.errors = [OSError(errno.EIO, "I/O error")] * 10
    with pytest.raises(StorageError, match=r"writing flaky://\S+/run/b.txt failed \(after 3 attempts\).*unreachable"):
        storage.write_text("b.txt", "x")
    assert fs.calls["pipe_file"] == 3 and sleeps == [0.5, 0.75]


def test_missing_objects_are_not_retried(flaky, tmp_path):
    storage, fs, sleeps = flaky
    with pytest.raises(FileNotFoundError):
        storage.read_bytes("nope")
    fs.errors = [FileNotFoundError("no such bucket")]
    with pytest.raises(StorageError, match="does the bucket exist"):
        storage.write_text("b.txt", "x")
    assert sleeps == []


def test_probe_retries_transient_errors_within_its_deadline(flaky):
    storage, fs, sleeps = flaky
    fs.errors = [ConnectionRefusedError(errno.ECONNREFUSED, "refused")]
    storage.probe()
    assert sleeps == [0.5] and fs.calls["rm_file"] == 1
    fs.errors = [ConnectionRefusedError(errno.ECONNREFUSED, "refused")] * 5
    with pytest.raises(StorageError, match="cannot use flaky://.*endpoint unreachable"):
        storage.probe(timeout_s=0.6)  # the first 0.5 s backoff fits, the second would not
    assert sleeps == [0.5, 0.5]


def test_retry_policy_backoff_is_bounded():
    policy = RetryPolicy()
    assert [policy.delay(n) for n in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]
    assert policy.write_timeout(3 << 20) == 63.0 and RetryPolicy(write_timeout_s=None).write_timeout(1) is None


# -- classification --------------------------------------------------------------------------
def _client_error(status: int, code: str):
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": f"{code} message"},
                        "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


def _translated(status: int, code: str):
    from s3fs.errors import translate_boto_error
    return translate_boto_error(_client_error(status, code))


def _cases():
    import aiohttp
    import botocore.exceptions as bc
    import google.auth.exceptions
    import requests.exceptions
    from fsspec.exceptions import FSTimeoutError
    from gcsfs.retry import HttpError
    wrapped = RuntimeError("wrapper")
    wrapped.__cause__ = ConnectionResetError()
    return [
        # transient
        (TimeoutError(), True), (FSTimeoutError(), True), (ConnectionResetError(), True), (BrokenPipeError(), True),
        (OSError(errno.EIO, "I/O error"), True), (OSError("unknown"), True), (wrapped, True),
        (_client_error(503, "SlowDown"), True), (_client_error(500, "InternalError"), True),
        (_translated(503, "ServiceUnavailable"), True), (_translated(500, "InternalError"), True),
        (_translated(400, "RequestTimeout"), True),
        (bc.EndpointConnectionError(endpoint_url="http://x"), True), (bc.ReadTimeoutError(endpoint_url="x"), True),
        (bc.ConnectTimeoutError(endpoint_url="x"), True),
        (HttpError({"code": 503, "message": "backend"}), True), (HttpError({"code": 429, "message": "slow"}), True),
        (HttpError({"code": 408, "message": "timeout"}), True), (requests.exceptions.ProxyError(), True),
        (aiohttp.ServerDisconnectedError(), True), (aiohttp.ClientOSError(errno.ECONNREFUSED, "refused"), True),
        (_cut_short(), True),
        # permanent
        (FileNotFoundError(), False), (PermissionError(), False), (IsADirectoryError(), False),
        (OSError(errno.ENOSPC, "No space left on device"), False), (OSError(errno.EROFS, "read-only fs"), False),
        (_client_error(400, "InvalidArgument"), False), (_client_error(403, "AccessDenied"), False),
        (_translated(400, "InvalidArgument"), False), (_translated(403, "AccessDenied"), False),
        (_translated(403, "InvalidAccessKeyId"), False), (_translated(404, "NoSuchKey"), False),
        (_translated(404, "NoSuchBucket"), False), (bc.NoCredentialsError(), False),
        (HttpError({"code": 404, "message": "nope"}), False), (HttpError({"code": 401, "message": "anon"}), False),
        (HttpError({"code": 412, "message": "precondition"}), False),
        (OSError("Forbidden: b/o\nno storage.objects.create access"), False),  # gcsfs's 403
        (google.auth.exceptions.DefaultCredentialsError("none"), False),
        (ValueError("Bad Request: invalid"), False), (TypeError(), False), (KeyError("x"), False),
    ]


def _cut_short():
    """What aiohttp raises (through s3fs) for an answer whose body ends before its Content-Length."""
    from aiohttp import ClientPayloadError
    from aiohttp.http_exceptions import ContentLengthError
    cause = ContentLengthError("Not enough data to satisfy content length header (received 2500 of 5000 bytes).")
    try:
        raise ClientPayloadError(f"Response payload is not completed: {cause!r}") from cause
    except ClientPayloadError as exc:
        return exc


def test_is_transient():
    wrong = [(type(e).__name__, str(e)[:40], want) for e, want in _cases() if is_transient(e) is not want]
    assert not wrong


def test_http_status_is_found_through_the_cause_chain():
    assert http_status(_translated(503, "ServiceUnavailable")) == 503
    assert http_status(ValueError()) is None
    assert http_status(_cut_short()) is None  # not the HTTP 400 aiohttp's parser error carries


def test_torn_writes_of_dead_processes_are_removed_and_live_ones_spared(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    torn = f"history.json.tmp-{dead.pid}-0123abcd"
    live = f"config.json.tmp-{os.getpid()}-0123abcd"
    for name in (torn, live, "history.json"):
        (tmp_path / name).write_text("x")
    assert open_storage(str(tmp_path)).remove_torn_writes() == [torn]
    assert sorted(os.listdir(tmp_path)) == sorted([live, "history.json"])
