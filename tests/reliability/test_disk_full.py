"""Disk full during a save: a clear error, the previous checkpoint intact and resumable."""
import json
import os
import re
import subprocess
import uuid

import pytest

from tests import helpers
from trainer import exitcodes


@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / f"disk-{uuid.uuid4().hex[:6]}"
    mnt.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]).returncode:
        pytest.skip("needs root to mount a small tmpfs (CI runs as root)")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)])


def test_disk_full_during_save(small_disk):
    run_dir = small_disk / "run"
    args = ["train", "--run-dir", str(run_dir), *helpers.TINY, "--save-every-steps", "5"]
    proc = helpers.start(args)
    out = helpers.wait_for(proc, "Epoch 2/")
    filler = small_disk / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == exitcodes.CHECKPOINT_ERROR, out
    assert "No space left on device" in out
    intact = int(re.search(r"the earlier checkpoint ckpt-(\d+) is intact", out).group(1))
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert status["latest"]["number"] == intact
    last_good = status["latest"]["global_step"]
    assert last_good >= 60  # the disk filled during epoch 2 or the first epoch's end save
    filler.unlink()
    final = helpers.run(args)
    assert final.returncode == 0, final.stderr
    assert f"(global step {last_good})" in final.stderr and "resumed from" in final.stderr
