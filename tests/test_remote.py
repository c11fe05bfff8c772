"""Remote run directories on real S3 (moto) and GCS (gcp-storage-emulator) servers on 127.0.0.1."""
import json
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import zlib

import pytest

from trainer import exitcodes
from trainer.checkpoints_index import DIR, MARKER, committed, leftovers
from trainer.storage import Storage
from tests import helpers


@pytest.fixture(params=["s3", "gcs"])
def remote_root(request):
    return request.getfixturevalue(f"{request.param}_run_root")


def _args(url, options, staging):
    return ["train", "--run-dir", url, "--storage-options", json.dumps(options),
            "--staging-dir", str(staging), *helpers.TINY]


def test_sigterm_then_resume_on_a_new_node_is_bitwise_equal(remote_root, reference_run, tmp_path):
    url, options = remote_root
    rng = random.Random(11)
    staging = tmp_path / "node-a"
    code, out = helpers.interrupt_run(_args(url, options, staging), signal.SIGTERM, rng, epochs=3)
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
    storage = Storage(url, options)
    assert json.loads(storage.read_text("history.json"))["epochs"][-1]["epoch"] == 3
    assert storage.read_bytes("history.png")[:4] == b"\x89PNG"
    names = storage.listdir(DIR)
    assert len(committed(names)) == 3 and leftovers(names) == []  # retention applied remotely


def test_status_and_lr_override_work_on_remote_run_dirs(s3_run_root, tmp_path):
    url, options = s3_run_root
    opts = ["--storage-options", json.dumps(options)]
    assert helpers.run(["lr", url, "3e-2", *opts]).returncode == 0
    first = helpers.run(_args(url, options, tmp_path / "s") + ["--epochs", "1", "--train-size", "256"])
    assert first.returncode == 0, first.stderr
    assert "learning rate 0.05 -> 0.03" in first.stderr
    status = json.loads(helpers.run(["status", url, "--json", *opts]).stdout)
    assert status["latest"]["epoch"] == 1 and abs(status["current_lr"] - 0.03) < 1e-7
    assert status["pending_lr_override"] is None and len(status["lr_changes"]) == 1


def _verify_newest(storage):
    """The newest committed remote checkpoint is complete: every listed file, right size and CRC."""
    names = storage.listdir(DIR)
    newest = committed(names)[0]
    manifest = json.loads(storage.read_text(f"{DIR}/ckpt-{newest}{MARKER}"))
    for name, info in manifest["files"].items():
        data = storage.read_bytes(f"{DIR}/{name}")
        assert len(data) == info["size"] and zlib.crc32(data) == info["crc32"], name
    return newest


@pytest.mark.parametrize("backend,trials", [("s3", 16), ("gcs", 8)])
def test_sigkill_during_saves_and_uploads_never_loses_a_commit(request, backend, trials, tmp_path):
    url, options = request.getfixturevalue(f"{backend}_run_root")
    storage = Storage(url, options)
    rng = random.Random(5)
    args = _args(url, options, tmp_path / "stage") + ["--save-every-steps", "3", "--epochs", "50"]
    last_reported = 0
    for trial in range(trials):
        proc = helpers.start(args)
        out = helpers.wait_for(proc, "Epoch ")
        time.sleep(rng.uniform(0.0, 1.5))
        proc.kill()
        rest, _ = proc.communicate(timeout=30)
        reported = [int(n) for n in re.findall(r"ckpt-(\d+) committed to", out + rest)]
        last_reported = max([last_reported, *reported])
        if last_reported:
            newest = _verify_newest(storage)
            assert newest >= last_reported, f"trial {trial}: newest {newest} < reported {last_reported}"
    # one more real start: must restore the newest commit and remove stale partial uploads
    proc = helpers.start(args)
    out = helpers.wait_for(proc, "Epoch ")
    proc.send_signal(signal.SIGTERM)
    out += proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert f"resumed from {url}/checkpoints/ckpt-" in out
    assert leftovers(storage.listdir(DIR)) == []


def test_unreachable_endpoint_fails_fast(tmp_path):
    options = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s",
               "config_kwargs": {"connect_timeout": 1, "retries": {"max_attempts": 1}}}
    started = time.monotonic()
    result = helpers.run(_args("s3://bucket/run", options, tmp_path / "s"))
    assert result.returncode == exitcodes.STORAGE_ERROR, result.stderr
    assert "endpoint unreachable" in result.stderr and "s3://bucket/run" in result.stderr
    assert time.monotonic() - started < 60


def test_missing_bucket_fails_fast(s3_run_root, tmp_path):
    url, options = s3_run_root
    result = helpers.run(_args("s3://no-such-bucket-here/run", options, tmp_path / "s"))
    assert result.returncode == exitcodes.STORAGE_ERROR
    assert "does the bucket exist" in result.stderr


def test_corrupt_remote_checkpoint_falls_back(s3_run_root, tmp_path):
    url, options = s3_run_root
    args = _args(url, options, tmp_path / "a") + ["--epochs", "2", "--train-size", "512"]
    assert helpers.run(args).returncode == 0
    storage = Storage(url, options)
    newest = committed(storage.listdir(DIR))[0]
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
    assert result.returncode == exitcodes.STORAGE_ERROR
    assert "NoCredentialsError" in result.stderr and "no credentials found" in result.stderr
