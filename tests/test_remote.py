"""Remote run directories on real S3 (moto) and GCS (gcp-storage-emulator) servers on 127.0.0.1."""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers
from trainer import errors
from trainer.checkpoint.index import DIR, MARKER, committed, leftovers, number_of
from trainer.storage import open_storage


@pytest.fixture(params=["s3", "gcs"])
def remote_root(request):
    return request.getfixturevalue(f"{request.param}_run_root")


def _args(url, options, staging):
    return ["train", "--run-dir", url, "--storage-options", json.dumps(options),
            "--staging-dir", str(staging), *helpers.TINY]


def _finished_run(url, options, staging, epochs: int, train_size: int):
    """Train a short remote run to the end; (its arguments, its storage, its newest commit)."""
    args = _args(url, options, staging) + ["--epochs", str(epochs), "--train-size", str(train_size)]
    result = helpers.run(args)
    assert result.returncode == 0, result.stderr
    storage = open_storage(url, options)
    return args, storage, committed(storage.listdir(DIR))[0]


def test_sigterm_then_resume_on_a_new_node_is_bitwise_equal(remote_root, reference_run, tmp_path):
    url, options = remote_root
    staging = tmp_path / "node-a"
    target = random.Random(11).randint(1, 2 * helpers.TINY_STEPS)
    code, out = helpers.interrupt_at_step(_args(url, options, staging), signal.SIGTERM, target)
    if code != 0:  # (0: the run ended before the signal landed; the new node then finds it complete)
        assert code == 128 + signal.SIGTERM, out
        assert "upload flushed (stop)" in out
        took = float(re.search(r"\(([\d.]+)s from signal to exit\)", out).group(1))
        assert took < 30  # SLURM's default KillWait
    shutil.rmtree(staging)  # the node is gone with its local disk
    final = helpers.run(_args(url, options, tmp_path / "node-b"))
    assert final.returncode == 0, final.stderr
    assert "resumed from " + url in final.stderr
    helpers.assert_bitwise_equal(helpers.latest_variables(reference_run),
                                 helpers.latest_variables(tmp_path / "node-b"))
    storage = open_storage(url, options)
    assert json.loads(storage.read_text("history.json"))["epochs"][-1]["epoch"] == 3
    assert storage.read_bytes("history.png")[:4] == b"\x89PNG"
    names = storage.listdir(DIR)
    assert len(committed(names)) == 3 and leftovers(names) == []  # retention applied remotely
    assert storage.exists("model.keras")


def test_status_and_lr_override_work_on_remote_run_dirs(s3_run_root, tmp_path):
    url, options = s3_run_root
    opts = ["--storage-options", json.dumps(options)]
    assert helpers.run(["lr", url, "3e-2", "--create", *opts]).returncode == 0
    first = helpers.run(_args(url, options, tmp_path / "s") + ["--epochs", "1", "--train-size", "256"])
    assert first.returncode == 0, first.stderr
    assert "learning rate 0.05 -> 0.03" in first.stderr
    status = json.loads(helpers.run(["status", url, "--json", *opts]).stdout)
    assert status["latest"]["epoch"] == 1 and abs(status["current_lr"] - 0.03) < 1e-7
    assert status["pending_lr_requests"] == [] and len(status["lr_changes"]) == 1


def test_a_commit_that_never_reached_the_bucket_is_uploaded_by_the_next_start(s3_run_root, tmp_path):
    url, options = s3_run_root
    args, storage, newest = _finished_run(url, options, tmp_path / "node", epochs=1, train_size=256)
    for name in storage.listdir(DIR):  # as if the process had been killed before this upload
        if number_of(name) == newest:
            storage.delete(f"{DIR}/{name}")
    assert newest not in committed(storage.listdir(DIR))
    result = helpers.run(args)
    assert result.returncode == 0, result.stderr
    assert "training already complete" in result.stdout
    assert f"ckpt-{newest} is committed in {tmp_path / 'node'}" in result.stderr
    assert committed(storage.listdir(DIR))[0] == newest
    helpers.assert_checkpoint_complete(storage, newest)


def test_a_store_that_hangs_mid_run_neither_stalls_training_nor_the_stop(s3_own_server, tmp_path):
    url, options, server = s3_own_server
    args = _args(url, options, tmp_path / "node") + ["--epochs", "500", "--save-every-steps", "5",
                                                     "--flush-timeout-s", "3", "--quiet"]
    proc = helpers.start(args)
    try:
        helpers.wait_for(proc, "EPOCH ")
        os.kill(server.pid, signal.SIGSTOP)  # the store accepts connections and never answers
        # training goes on behind the hung store (a stalled run would time out here)
        out = "".join(helpers.wait_for(proc, "EPOCH ", timeout=300) for _ in range(3))
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out += proc.communicate(timeout=60)[0]
        took = time.monotonic() - sent
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert took < 30, f"{took:.1f}s from SIGTERM to exit with a hung store (SLURM's KillWait is 30 s)"
    assert "upload did not finish within 3s (stop)" in out, out
    stopped_at = int(re.search(r"checkpoint ckpt-(\d+) \(", out).group(1))
    os.kill(server.pid, signal.SIGCONT)  # the store is back; the next start on this node uploads
    proc = helpers.start(args)
    out = helpers.wait_for(proc, "EPOCH ")
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=60)[0]
    assert f"resumed from {url}/{DIR}/ckpt-{stopped_at} at" in out, out
    assert "upload flushed (stop)" in out, out
    assert committed(open_storage(url, options).listdir(DIR))[0] > stopped_at


def test_unreachable_endpoint_fails_fast(tmp_path):
    options = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    started = time.monotonic()
    result = helpers.run(_args("s3://bucket/run", options, tmp_path / "s"))
    assert result.returncode == errors.STORAGE_ERROR, result.stderr
    assert "endpoint unreachable" in result.stderr and "s3://bucket/run" in result.stderr
    assert time.monotonic() - started < 60


def test_missing_bucket_fails_fast(s3_run_root, tmp_path):
    url, options = s3_run_root
    result = helpers.run(_args("s3://no-such-bucket-here/run", options, tmp_path / "s"))
    assert result.returncode == errors.STORAGE_ERROR
    assert "does the bucket exist" in result.stderr


def test_corrupt_remote_checkpoint_falls_back(s3_run_root, tmp_path):
    url, options = s3_run_root
    _, storage, newest = _finished_run(url, options, tmp_path / "a", epochs=2, train_size=512)
    data_name = f"{DIR}/ckpt-{newest}.data-00000-of-00001"
    raw = bytearray(storage.read_bytes(data_name))
    raw[len(raw) // 3] ^= 0x01
    storage.write_bytes(data_name, bytes(raw))
    result = helpers.run(_args(url, options, tmp_path / "b") + ["--epochs", "3", "--train-size", "512"])
    assert result.returncode == 0, result.stderr
    assert f"checkpoint ckpt-{newest} is unusable" in result.stderr and "CRC32" in result.stderr
    assert storage.exists(f"{DIR}/ckpt-{newest}.corrupt.json")
    assert not storage.exists(f"{DIR}/ckpt-{newest}{MARKER}")


def test_missing_credentials_fail_fast(s3_server, tmp_path):
    env = {k: v for k, v in helpers.env().items() if not k.startswith("AWS_")}
    env.update(AWS_EC2_METADATA_DISABLED="true", AWS_CONFIG_FILE="/dev/null", AWS_SHARED_CREDENTIALS_FILE="/dev/null")
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "--run-dir", "s3://any-bucket/run",
                             "--storage-options", json.dumps({"endpoint_url": s3_server}), "--preset", "tiny"],
                            cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == errors.STORAGE_ERROR
    assert "NoCredentialsError" in result.stderr and "no credentials found" in result.stderr
