"""Real object-store servers on 127.0.0.1 for the storage tests (no network beyond loopback).

Fixtures (load with ``pytest_plugins = ["tests.emulators"]``):

* ``s3_server``: moto's standalone S3 server (``python -m moto.server -H 127.0.0.1 -p PORT``),
  one per session; the endpoint URL. No authentication: any key/secret works.
* ``gcs_server``: gcp-storage-emulator (``python -m gcp_storage_emulator start --host
  127.0.0.1 --port PORT --in-memory -q``), one per session; the endpoint URL.
* ``s3_run_root`` / ``gcs_run_root``: a fresh bucket per test, as ``(run_url, storage_options)``.
* ``s3_iam_server``: a second moto server that *enforces* IAM (it checks signatures and the
  users' policies; moto ignores bucket policies, so read-only is made with a user policy);
  ``{"endpoint": ..., "admin": options}``. ``s3_read_only_root``: ``(run_url, options)``
  whose credentials may read and list the bucket but not write or delete.
* ``s3_own_server``: a moto server for one test, as ``(run_url, options, process)``: the test
  may SIGSTOP the process to play a store that hangs mid-run (connections are accepted by
  the kernel, nothing answers), and SIGCONT it to bring it back.
* ``frozen_endpoint``: a URL that accepts connections but never answers (a hung store).
* ``http_stub``: a factory for small HTTP servers on 127.0.0.1 that answer with an error
  status (optionally only the first N requests, forwarding the rest to a real server):
  to inject HTTP 5xx into a real client, or to play a GCS that says 401/403 (the emulator
  has no authentication).

Readiness: a server counts as up once an HTTP request to it gets any answer; if it exits
or is not up within 60 s the fixture fails and shows the server's log. Credentials go into
storage options; ``os.environ`` is not touched.
"""
from __future__ import annotations

import http.client
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

import pytest

REGION = "us-east-1"
DUMMY_KEY, DUMMY_SECRET = "testing", "testing"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], url: str, name: str, env: dict | None = None, timeout: float = 60):
    """Start ``cmd`` and wait until ``url`` answers; (process, log file). Fails the test with the log."""
    log = tempfile.NamedTemporaryFile("w+", suffix=f"-{name}.log", delete=False)  # noqa: SIM115 - outlives us
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            env=env if env is not None else _server_env())
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return proc, log
        except urllib.error.HTTPError:
            return proc, log  # it answers
        except OSError:
            time.sleep(0.1)
    status = f"exited with {proc.returncode}" if proc.poll() is not None else "did not answer in time"
    _stop(proc, None)
    log.seek(0)
    text = log.read()[-4000:]
    log.close()
    os.unlink(log.name)
    pytest.fail(f"{name} {status} ({' '.join(cmd)}); its log:\n{text}", pytrace=False)


def _stop(proc, log) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    if log is not None:
        log.close()
        try:
            os.unlink(log.name)
        except FileNotFoundError:
            pass


def _server_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("INITIAL_NO_AUTH_ACTION_COUNT", "MOTO_PORT")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _start_moto(name: str):
    port = _free_port()
    return _serve([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                  f"http://127.0.0.1:{port}/moto-api/data.json", name) + (f"http://127.0.0.1:{port}",)


def _bucket_name() -> str:
    return "test-" + uuid.uuid4().hex[:12]


def _boto3(service: str, endpoint: str, key: str = DUMMY_KEY, secret: str = DUMMY_SECRET):
    import boto3
    return boto3.client(service, endpoint_url=endpoint, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name=REGION)


def s3_options(endpoint: str, key: str = DUMMY_KEY, secret: str = DUMMY_SECRET, **extra) -> dict:
    """s3fs storage options for a local S3 endpoint."""
    return {"endpoint_url": endpoint, "key": key, "secret": secret,
            "client_kwargs": {"region_name": REGION}, **extra}


@pytest.fixture(scope="session")
def s3_server():
    proc, log, endpoint = _start_moto("moto")
    yield endpoint
    _stop(proc, log)


@pytest.fixture(scope="session")
def gcs_server():
    port = _free_port()
    proc, log = _serve([sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
                        "--port", str(port), "--in-memory", "-q"],
                       f"http://127.0.0.1:{port}/storage/v1/b?project=test", "gcp-storage-emulator")
    yield f"http://127.0.0.1:{port}"
    _stop(proc, log)


def create_gcs_bucket(endpoint: str, bucket: str) -> None:
    req = urllib.request.Request(f"{endpoint}/storage/v1/b?project=test", method="POST",
                                 data=json.dumps({"name": bucket}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()


@pytest.fixture
def s3_run_root(s3_server):
    bucket = _bucket_name()
    _boto3("s3", s3_server).create_bucket(Bucket=bucket)
    return f"s3://{bucket}/run", s3_options(s3_server)


@pytest.fixture
def s3_own_server():
    proc, log, endpoint = _start_moto("moto-own")
    bucket = _bucket_name()
    _boto3("s3", endpoint).create_bucket(Bucket=bucket)
    yield f"s3://{bucket}/run", s3_options(endpoint), proc
    os.kill(proc.pid, signal.SIGCONT)
    _stop(proc, log)


@pytest.fixture
def gcs_run_root(gcs_server):
    bucket = _bucket_name()
    create_gcs_bucket(gcs_server, bucket)
    return f"gs://{bucket}/run", {"endpoint_url": gcs_server, "token": "anon", "project": "test"}


# -- S3 with authentication: read-only credentials -------------------------------------------
def _create_user(endpoint: str, admin: dict, name: str, policy: dict) -> dict:
    iam = _boto3("iam", endpoint, admin["key"], admin["secret"])
    iam.create_user(UserName=name)
    iam.put_user_policy(UserName=name, PolicyName=f"{name}-policy", PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return s3_options(endpoint, key["AccessKeyId"], key["SecretAccessKey"])


@pytest.fixture(scope="session")
def s3_iam_server():
    """A moto server that checks signatures and IAM user policies (its own process: the switch is global)."""
    proc, log, endpoint = _start_moto("moto-iam")
    try:
        admin = _create_user(endpoint, {"key": DUMMY_KEY, "secret": DUMMY_SECRET}, "admin",
                             {"Version": "2012-10-17",
                              "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
        # from now on every request must be signed by a known user and allowed by its policies
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset-auth", data=b"0", method="POST",
                                                      headers={"Content-Type": "text/plain"}), timeout=10).read()
    except BaseException:
        _stop(proc, log)
        raise
    yield {"endpoint": endpoint, "admin": admin}
    _stop(proc, log)


def make_s3_read_only(endpoint: str, admin: dict, bucket: str) -> dict:
    """Storage options for a new user who may only read and list ``bucket``."""
    arn = f"arn:aws:s3:::{bucket}"
    policy = {"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": arn},
        {"Effect": "Allow", "Action": ["s3:GetObject"], "Resource": f"{arn}/*"}]}
    return _create_user(endpoint, admin, "reader-" + uuid.uuid4().hex[:8], policy)


@pytest.fixture
def s3_read_only_root(s3_iam_server):
    """``(run_url, options)``: the bucket exists and holds ``run/existing.txt``; the options' user
    may read and list it but not write or delete."""
    endpoint, admin = s3_iam_server["endpoint"], s3_iam_server["admin"]
    bucket = _bucket_name()
    s3 = _boto3("s3", endpoint, admin["key"], admin["secret"])
    s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=bucket, Key="run/existing.txt", Body=b"hello")
    return f"s3://{bucket}/run", make_s3_read_only(endpoint, admin, bucket)


# -- HTTP stubs: injected errors in front of (or instead of) a real server ----------------------
class HttpStub:
    """Answers the first ``fail_first`` requests (all if None) with ``status``/``body``;
    forwards the others to ``upstream`` (``http://host:port``). ``requests`` counts them."""

    def __init__(self, status: int, body: bytes = b"", content_type: str = "application/json",
                 fail_first: int | None = None, upstream: str | None = None):
        self.status, self.body, self.content_type = status, body, content_type
        self.fail_first, self.upstream = fail_first, upstream
        self.requests = 0
        self._lock = threading.Lock()
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # answers "Expect: 100-continue", as S3 clients send it

            def _handle(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with stub._lock:
                    stub.requests += 1
                    fail = stub.fail_first is None or stub.requests <= stub.fail_first
                if fail or stub.upstream is None:
                    self.send_response(stub.status)
                    self.send_header("Content-Type", stub.content_type)
                    self.send_header("Content-Length", str(len(stub.body)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(stub.body)
                    return
                host = stub.upstream.split("://", 1)[1]
                conn = http.client.HTTPConnection(host, timeout=30)
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection")}
                conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def frozen_endpoint():
    """``http://127.0.0.1:PORT`` that accepts connections (the kernel's backlog) but never answers,
    like a store whose process hangs (cf. SIGSTOP)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def s3_error_body(code: str, message: str) -> bytes:
    return (f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message>'
            f"<RequestId>stub</RequestId></Error>").encode()


def gcs_error_body(code: int, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message,
                                 "errors": [{"message": message, "domain": "global"}]}}).encode()


@pytest.fixture
def http_stub():
    """``http_stub(status, body=..., fail_first=None, upstream=None) -> HttpStub``; all closed after the test."""
    stubs = []

    def make(*args, **kwargs) -> HttpStub:
        stubs.append(HttpStub(*args, **kwargs))
        return stubs[-1]

    yield make
    for stub in stubs:
        stub.close()
