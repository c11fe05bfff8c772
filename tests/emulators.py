"""Real object-store servers on 127.0.0.1 for the storage tests.

``s3_server``: moto's standalone S3 server; ``gcs_server``: gcp-storage-emulator.
Both start once per test session on a free port and are stopped at the end.
``s3_run_root``/``gcs_run_root`` give each test a fresh bucket as
``(run_url, storage_options)``.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(cmd: list[str], url: str, name: str):
    log = tempfile.NamedTemporaryFile("w+", suffix=f"-{name}.log", delete=False)
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            break
        try:
            urllib.request.urlopen(url, timeout=1)
            return proc, log
        except urllib.error.HTTPError:
            return proc, log  # it answers
        except OSError:
            time.sleep(0.2)
    proc.kill()
    log.seek(0)
    pytest.fail(f"{name} did not start ({' '.join(cmd)}):\n{log.read()[-3000:]}")


def _stop(proc, log) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    os.unlink(log.name)


@pytest.fixture(scope="session")
def s3_server():
    port = _free_port()
    exe = shutil.which("moto_server")
    cmd = [exe] if exe else [sys.executable, "-m", "moto.server"]
    proc, log = _serve([*cmd, "-H", "127.0.0.1", "-p", str(port)], f"http://127.0.0.1:{port}/", "moto")
    yield f"http://127.0.0.1:{port}"
    _stop(proc, log)


@pytest.fixture(scope="session")
def gcs_server():
    port = _free_port()
    exe = shutil.which("gcp-storage-emulator")
    proc, log = _serve([exe, "start", "--host", "127.0.0.1", "--port", str(port), "--in-memory", "-q"],
                       f"http://127.0.0.1:{port}/storage/v1/b?project=test", "gcp-storage-emulator")
    yield f"http://127.0.0.1:{port}"
    _stop(proc, log)


def _bucket_name() -> str:
    return "test-" + uuid.uuid4().hex[:12]


@pytest.fixture
def s3_run_root(s3_server):
    import boto3
    bucket = _bucket_name()
    boto3.client("s3", endpoint_url=s3_server, aws_access_key_id="testing",
                 aws_secret_access_key="testing", region_name="us-east-1").create_bucket(Bucket=bucket)
    return f"s3://{bucket}/run", {"endpoint_url": s3_server, "key": "testing", "secret": "testing",
                                  "client_kwargs": {"region_name": "us-east-1"}}


@pytest.fixture
def gcs_run_root(gcs_server):
    bucket = _bucket_name()
    req = urllib.request.Request(f"{gcs_server}/storage/v1/b?project=test", method="POST",
                                 data=json.dumps({"name": bucket}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=10).read()
    return f"gs://{bucket}/run", {"endpoint_url": gcs_server, "token": "anon", "project": "test"}
