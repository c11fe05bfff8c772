"""Bad input: a clear error naming the file, nothing trained, nothing overwritten."""
import gzip
import json
import os
import shutil

import pytest

from tests import helpers
from trainer import exitcodes

SHORT = ["--preset", "tiny", "--train-size", "512", "--val-size", "64", "--no-tensorboard",
         "--epochs", "2"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    result = helpers.run(["train", "--run-dir", str(run_dir), *SHORT])
    assert result.returncode == 0, result.stderr
    return run_dir


def _snapshot(run_dir):
    return {p.relative_to(run_dir): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture
def run_copy(trained, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(trained, dst)
    return dst


@pytest.mark.parametrize("content", ["fast please\n", "nan\n", "-0.1\n", "", "1e9\n", "0.1\n0.2\n"])
def test_bad_lr_override_file_stops_before_training(run_copy, content):
    (run_copy / "lr_override").write_text(content)
    before = _snapshot(run_copy)
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "3"])
    assert result.returncode == exitcodes.BAD_INPUT, result.stderr
    assert f"{run_copy}/lr_override" in result.stderr and "expected one positive number" in result.stderr
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "0", "inf"])
def test_lr_command_rejects_bad_values(run_copy, value):
    result = helpers.run(["lr", str(run_copy), value])
    assert result.returncode == exitcodes.BAD_INPUT
    assert not (run_copy / "lr_override").exists()


def test_different_architecture_is_refused_by_config(run_copy):
    before = _snapshot(run_copy)
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--filters", "4,16"])
    assert result.returncode == exitcodes.CHECKPOINT_ERROR
    assert "config.json was written with other settings" in result.stderr and "filters" in result.stderr
    assert _snapshot(run_copy) == before


def test_different_architecture_is_refused_by_checkpoint_without_partial_restore(run_copy):
    (run_copy / "config.json").unlink()
    ckpts = sorted(os.listdir(run_copy / "checkpoints"))
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--filters", "4,16"])
    assert result.returncode == exitcodes.CHECKPOINT_ERROR, result.stderr
    assert "was written by a different model" in result.stderr and "nothing was restored" in result.stderr
    assert sorted(os.listdir(run_copy / "checkpoints")) == ckpts


def _newest(run_dir):
    return max(int(n.split("-")[1].split(".")[0]) for n in os.listdir(run_dir / "checkpoints")
               if n.endswith(".commit.json"))


@pytest.mark.parametrize("damage", ["bitflip_data", "truncate_index", "missing_file", "garbage_marker"])
def test_corrupt_latest_checkpoint_falls_back_to_previous(run_copy, damage):
    ckdir = run_copy / "checkpoints"
    newest = _newest(run_copy)
    previous = json.loads((ckdir / f"ckpt-{newest - 1}.commit.json").read_text())
    data = ckdir / f"ckpt-{newest}.data-00000-of-00001"
    if damage == "bitflip_data":
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x40
        data.write_bytes(bytes(raw))
    elif damage == "truncate_index":
        index = ckdir / f"ckpt-{newest}.index"
        index.write_bytes(index.read_bytes()[:20])
    elif damage == "missing_file":
        data.unlink()
    else:
        (ckdir / f"ckpt-{newest}.commit.json").write_text("{not json")
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "3"])
    assert result.returncode == 0, result.stderr
    assert f"checkpoint ckpt-{newest} is unusable" in result.stderr
    assert f"ckpt-{newest - 1} at epoch {previous['epoch'] + 1} step {previous['step_in_epoch']}" in result.stderr
    assert (ckdir / f"ckpt-{newest}.corrupt.json").exists()


def test_garbage_checkpoint_state_file_is_rebuilt(run_copy):
    (run_copy / "checkpoints" / "checkpoint").write_text("\x00\x01 garbage {{{")
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "3"])
    assert result.returncode == 0, result.stderr
    assert "is unreadable" in result.stderr and "resumed from" in result.stderr
    import tensorflow as tf
    assert tf.train.latest_checkpoint(str(run_copy / "checkpoints")).endswith(f"ckpt-{_newest(run_copy)}")


def test_all_checkpoints_corrupt_is_an_error_not_a_fresh_start(run_copy):
    ckdir = run_copy / "checkpoints"
    for marker in ckdir.glob("*.commit.json"):
        marker.write_text("garbage")
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "3"])
    assert result.returncode == exitcodes.CHECKPOINT_ERROR
    assert "could be restored" in result.stderr and "starting a new run" not in result.stderr


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_damaged_dataset_names_the_file(tmp_path, damage):
    src = "/usr/share/datasets/fashion-mnist"
    data_dir = tmp_path / "fmnist"
    shutil.copytree(src, data_dir)
    target = data_dir / "train-labels-idx1-ubyte.gz"
    if damage == "missing":
        target.unlink()
    else:
        raw = gzip.decompress(target.read_bytes())
        target.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    result = helpers.run(["train", "--run-dir", str(tmp_path / "run"), *SHORT, "--data-dir", str(data_dir)])
    assert result.returncode == exitcodes.DATA_ERROR, result.stderr
    assert "train-labels-idx1-ubyte" in result.stderr and "dataset-fashion-mnist" in result.stderr


def test_fresh_archives_instead_of_deleting(run_copy):
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "1", "--fresh"])
    assert result.returncode == 0, result.stderr
    backups = list(run_copy.parent.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "checkpoints").is_dir()
    assert "moved the existing run" in result.stderr


def test_bad_flag_values_name_the_flag(tmp_path):
    result = helpers.run(["train", "--run-dir", str(tmp_path / "r"), "--max-to-keep", "1"])
    assert result.returncode == exitcodes.BAD_INPUT and "--max-to-keep" in result.stderr
    result = helpers.run(["train", "--run-dir", str(tmp_path / "r"), "--stages", "x"])
    assert result.returncode == 2 and "--stages" in result.stderr
