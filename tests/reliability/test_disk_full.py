"""Disk full during a save: a clear error, the previous checkpoint intact and resumable."""
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from tests import helpers
from trainer import errors


def _latest_step(run_dir):
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout or "{}")
    return (status.get("latest") or {}).get("global_step")


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_during_save(small_disk, tmp_path):
    gate = helpers.Gate(tmp_path / "gate")
    job = helpers.user_job(tmp_path / "elsewhere")
    run_dir = small_disk / "run"
    args = ["train", "--run-dir", str(run_dir), "--job", str(job), "--no-tensorboard", "--save-every-steps", "5",
            "--gate", str(gate.path)]
    proc = helpers.start([*args, "--log-every-steps", "1"])
    gate.allow(42)  # the run waits at step 42 (epoch 2) for its next batch; its last save was at step 40
    out, reached = helpers.wait_for_step(proc, 42)
    assert reached == 42, out
    deadline = time.monotonic() + 120
    while _latest_step(run_dir) != 40:  # the save of step 40 is written in the background
        assert time.monotonic() < deadline, "the checkpoint of step 40 was never committed"
        time.sleep(0.05)
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    gate.allow(10_000)  # the save at step 45 meets the full disk
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == errors.CHECKPOINT_ERROR, out
    assert "No space left on device" in out
    intact = int(re.search(r"the earlier checkpoint ckpt-(\d+) is intact", out).group(1))
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert status["latest"]["number"] == intact and status["latest"]["global_step"] == 40
    filler.unlink()
    final = helpers.run(args)
    assert final.returncode == 0, final.stderr
    assert "(global step 40)" in final.stderr and "resumed from" in final.stderr
