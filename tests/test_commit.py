"""The commit protocol alone, without TensorFlow: commit files, damage one, verify."""
import json
import subprocess
import sys

import pytest

from trainer.checkpoint.commit import MISSING, WRONG_CRC, WRONG_SIZE, CommitDir, stored_damage
from trainer.checkpoint.errors import CorruptCheckpoint
from trainer.checkpoint.index import DIR, committed
from trainer.storage import open_storage


def _write_checkpoint(folder, number: int, meta: dict | None = None) -> dict:
    """Files as TF would write them under ckpt-<number>, then committed."""
    (folder / f"ckpt-{number}.index").write_bytes(b"index %d" % number)
    (folder / f"ckpt-{number}.data-00000-of-00001").write_bytes(bytes(range(256)) * (number + 1))
    return CommitDir(str(folder), max_to_keep=2).commit(number, f"ckpt-{number}", meta or {"global_step": number})


def _local_only(name, path):
    """A local run's mirror: nothing to fetch a file from."""


def _nowhere(name):
    raise FileNotFoundError(name)


def test_commit_module_does_not_load_tensorflow():
    code = "import sys, trainer.checkpoint.commit; sys.exit('tensorflow' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_commit_writes_the_manifest_last_and_names_every_file(tmp_path):
    manifest = _write_checkpoint(tmp_path, 3, {"global_step": 30, "milestone": True, "epoch": 1})
    local = CommitDir(str(tmp_path), 2)
    assert committed(local.names()) == [3]
    assert sorted(manifest["files"]) == ["ckpt-3.data-00000-of-00001", "ckpt-3.index", "ckpt-3.milestone"]
    assert json.loads((tmp_path / "ckpt-3.commit.json").read_text()) == manifest
    assert 'model_checkpoint_path: "ckpt-3"' in (tmp_path / "checkpoint").read_text()
    assert local.read_manifest(3, _nowhere) == manifest
    local.verify(manifest, _local_only)  # intact: nothing raised


@pytest.mark.parametrize("damage, kind, message", [
    ("bitflip", WRONG_CRC, "fails its CRC32 check"),
    ("truncate", WRONG_SIZE, "manifest says"),
    ("delete", MISSING, "listed in the manifest but missing"),
])
def test_a_damaged_file_fails_verification_here_and_in_the_run_dir(tmp_path, damage, kind, message):
    folder = tmp_path / DIR
    folder.mkdir()
    manifest = _write_checkpoint(folder, 1)
    path = folder / "ckpt-1.data-00000-of-00001"
    data = path.read_bytes()
    if damage == "bitflip":
        path.write_bytes(data[:10] + bytes([data[10] ^ 1]) + data[11:])
    elif damage == "truncate":
        path.write_bytes(data[:-1])
    else:
        path.unlink()
    with pytest.raises(CorruptCheckpoint, match=message):
        CommitDir(str(folder), 2).verify(manifest, _local_only)
    with pytest.raises(CorruptCheckpoint, match="listed in the manifest but missing"):  # nor in the mirror
        CommitDir(str(folder), 2).verify(manifest, lambda name, path: _nowhere(name))
    assert stored_damage(open_storage(str(tmp_path)), manifest) == (path.name, kind)


def test_fetch_repairs_a_damaged_file_before_it_is_judged(tmp_path):
    manifest = _write_checkpoint(tmp_path, 1)
    path = tmp_path / "ckpt-1.index"
    good = path.read_bytes()
    path.write_bytes(b"garbage")
    CommitDir(str(tmp_path), 2).verify(manifest, lambda name, dest: open(dest, "wb").write(good))


def test_set_aside_and_leftovers(tmp_path):
    for number in (1, 2):
        _write_checkpoint(tmp_path, number)
    (tmp_path / "ckpt-3.index").write_bytes(b"uncommitted")
    local = CommitDir(str(tmp_path), 2)
    record = json.loads(local.set_aside(2, "fails its CRC32 check"))
    assert record["number"] == 2 and local.committed() == [1]
    assert (tmp_path / "ckpt-2.corrupt.json").exists()
    local.remove_leftovers()
    assert not (tmp_path / "ckpt-3.index").exists() and (tmp_path / "ckpt-2.index").exists()
    with pytest.raises(CorruptCheckpoint, match="commit marker ckpt-2.commit.json is damaged"):
        (tmp_path / "ckpt-2.commit.json").write_text("{not json")
        local.read_manifest(2, _nowhere)
