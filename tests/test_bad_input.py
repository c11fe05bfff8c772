"""Bad input: a clear error naming the file, nothing trained, nothing overwritten."""
import gzip
import json
import os
import shutil

import pytest

from tests import helpers
from trainer import errors

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
    assert result.returncode == errors.BAD_INPUT, result.stderr
    assert f"{run_copy}/lr_override" in result.stderr and "expected one positive number" in result.stderr
    assert _snapshot(run_copy) == before


@pytest.mark.parametrize("value", ["abc", "nan", "-1", "0", "inf"])
def test_lr_command_rejects_bad_values(run_copy, value):
    result = helpers.run(["lr", str(run_copy), value])
    assert result.returncode == errors.BAD_INPUT
    assert not (run_copy / "lr_override").exists()


def test_different_architecture_is_refused_by_config(run_copy):
    before = _snapshot(run_copy)
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--filters", "4,16"])
    assert result.returncode == errors.CHECKPOINT_ERROR
    assert "config.json was written with other settings" in result.stderr and "filters" in result.stderr
    assert _snapshot(run_copy) == before


def test_different_architecture_is_refused_by_checkpoint_without_partial_restore(run_copy):
    (run_copy / "config.json").unlink()
    ckpts = sorted(os.listdir(run_copy / "checkpoints"))
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--filters", "4,16"])
    assert result.returncode == errors.CHECKPOINT_ERROR, result.stderr
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
    assert result.returncode == errors.CHECKPOINT_ERROR
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
    assert result.returncode == errors.DATA_ERROR, result.stderr
    assert "train-labels-idx1-ubyte" in result.stderr and "dataset-fashion-mnist" in result.stderr


def test_fresh_archives_instead_of_deleting(run_copy):
    result = helpers.run(["train", "--run-dir", str(run_copy), *SHORT, "--epochs", "1", "--fresh"])
    assert result.returncode == 0, result.stderr
    backups = list(run_copy.parent.glob("run.bak-*"))
    assert len(backups) == 1 and (backups[0] / "checkpoints").is_dir()
    assert "moved the existing run" in result.stderr


def test_bad_flag_values_name_the_flag(tmp_path):
    result = helpers.run(["train", "--run-dir", str(tmp_path / "r"), "--max-to-keep", "1"])
    assert result.returncode == errors.BAD_INPUT and "--max-to-keep" in result.stderr
    result = helpers.run(["train", "--run-dir", str(tmp_path / "r"), "--stages", "x"])
    assert result.returncode == 2 and "--stages" in result.stderr


GOOD_JOB = '''
import keras, numpy as np, trainer
def build_model():
    m = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    return m
def build_data():
    return trainer.ArrayData(np.zeros((64, 4), "float32"), np.zeros(64, "int32"), batch_size=8)
EPOCHS = 1
'''
BAD_JOBS = {
    "missing file": (None, "no such file"),
    "syntax error": ("def build_model(:\n", "importing it failed: SyntaxError"),
    "raises on import": ("raise RuntimeError('no GPU here')\n", "importing it failed: RuntimeError: no GPU here"),
    "no build_data": ("def build_model():\n    pass\n", "lacks build_data(settings)"),
    "uncompiled model": (GOOD_JOB.replace('    m.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")\n',
                                          ""), "returned an uncompiled model"),
    "not a model": (GOOD_JOB.replace("    return m\n", "    return 'resnet'\n"),
                    "returned str, expected a keras.Model"),
    "wrong data shape": (GOOD_JOB.replace('np.zeros((64, 4), "float32")', 'np.zeros((64, 7), "float32")'),
                         "the model does not accept the data"),
    "data of the wrong kind": (GOOD_JOB.replace("return trainer.ArrayData(", "return (").replace(
        ", batch_size=8)", ")"), "must be trainer.ArrayData, trainer.EpochBatches"),
    "build_data raises": (GOOD_JOB.replace("def build_data():\n", "def build_data():\n    1 / 0\n"),
                          "build_data failed (ZeroDivisionError"),
    "bad fit_kwargs": (GOOD_JOB + "def fit_kwargs():\n    return {'validation_freq': 0}\n",
                       "fit_kwargs: validation_freq must be a positive integer"),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_bad_job_exits_2_naming_the_file_and_writes_nothing(tmp_path, case):
    source, expected = BAD_JOBS[case]
    job = tmp_path / "jobs" / "broken_job.py"
    if source is not None:
        job.parent.mkdir()
        job.write_text(source)
    run_dir = tmp_path / "run"
    result = helpers.run(["train", "--job", str(job), "--run-dir", str(run_dir)])
    assert result.returncode == errors.BAD_INPUT, result.stdout + result.stderr
    assert "broken_job.py" in result.stderr and expected in result.stderr, result.stderr
    assert not run_dir.exists()


def test_good_job_of_that_template_trains(tmp_path):
    job = tmp_path / "ok_job.py"
    job.write_text(GOOD_JOB)
    result = helpers.run(["train", "--job", str(job), "--run-dir", str(tmp_path / "run"), "--no-tensorboard"])
    assert result.returncode == 0, result.stderr
    assert "training complete: 1 epochs, global step 8" in result.stdout


def test_unknown_module_and_bad_setting_value(tmp_path):
    result = helpers.run(["train", "--job", "no_such_pkg.jobs.cifar", "--run-dir", str(tmp_path / "r")])
    assert result.returncode == errors.BAD_INPUT and "no module named 'no_such_pkg'" in result.stderr
    digits = str(helpers.ROOT / "jobs" / "digits.py")
    result = helpers.run(["train", "--job", digits, "--run-dir", str(tmp_path / "r"), "--hidden", "wide"])
    assert result.returncode == errors.BAD_INPUT and "--hidden" in result.stderr and "'wide'" in result.stderr
    result = helpers.run(["train", "--job", digits, "--run-dir", str(tmp_path / "r"), "--dropout", "1.5"])
    assert result.returncode == errors.BAD_INPUT and "--dropout must be in [0, 1)" in result.stderr
    assert not (tmp_path / "r").exists()


def test_resuming_with_another_job_is_refused(run_copy):
    before = _snapshot(run_copy)
    result = helpers.run(["train", "--job", str(helpers.ROOT / "jobs" / "digits.py"), "--run-dir", str(run_copy)])
    assert result.returncode == errors.CHECKPOINT_ERROR, result.stderr
    assert "this run was trained by job" in result.stderr and "fashion_mnist.py" in result.stderr
    assert _snapshot(run_copy) == before
