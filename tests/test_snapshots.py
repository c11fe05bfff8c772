"""Snapshots to go back to (milestones, ``train --from``) and the exported model."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from trainer import errors
from trainer.checkpoint.index import DIR, committed
from trainer.storage import open_storage


def _args(tmp_path, epochs=4):
    job = helpers.user_job(tmp_path / "elsewhere")
    return ["--job", str(job), "--no-tensorboard", "--epochs", str(epochs), "--keep-every-epochs", "2",
            "--max-to-keep", "2", "--save-every-steps", "10"]


def _files(root):
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def _finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("finished")
    run_dir, args = folder / "run", _args(folder)
    result = helpers.run(["train", "--run-dir", str(run_dir), *args])
    assert result.returncode == 0, result.stderr
    return run_dir, args


@pytest.fixture
def finished_run(_finished, tmp_path):
    """A copy of one finished run of 4 epochs (made once for the file), for each test to change."""
    run_dir, args = _finished
    shutil.copytree(run_dir, tmp_path / "run")
    return tmp_path / "run", args


def test_milestones_survive_retention_and_status_lists_them(finished_run):
    run_dir, _ = finished_run
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert [(m["epoch"]) for m in status["milestones"]] == [4, 2]
    names = os.listdir(run_dir / DIR)
    kept = committed(names)
    assert len(kept) == 3  # the newest two (epoch 4's end is also a milestone) and epoch 2's
    text = helpers.run(["status", str(run_dir)]).stdout
    assert "milestones:       epoch-4" in text and "epoch-2 (ckpt-" in text


def test_rollback_to_a_milestone_then_training_on_is_bitwise_equal_to_the_first_pass(finished_run, tmp_path):
    """Going back to epoch 2 and training on repeats epochs 3-4 exactly: the rollback restored the
    milestone's state bitwise. Everything after it is archived, nothing deleted."""
    run_dir, args = finished_run
    first_pass = helpers.latest_variables(run_dir)
    before = _files(run_dir)
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    milestone = next(m for m in status["milestones"] if m["epoch"] == 2)

    result = helpers.run(["train", "--run-dir", str(run_dir), *args, "--from", "epoch-2"])
    assert result.returncode == 0, result.stderr
    assert f"rolled back to ckpt-{milestone['number']} (epoch-2)" in result.stderr
    assert f"resumed from {run_dir}/checkpoints/ckpt-{milestone['number']} at epoch 3 step 0/32" in result.stderr
    helpers.assert_bitwise_equal(first_pass, helpers.latest_variables(run_dir))

    (record,) = json.loads((run_dir / "rollbacks.json").read_text())
    archive = run_dir / record["archive"]
    archived = _files(archive)
    for name, data in before.items():  # every file of the first pass is still here or in the archive
        if name.startswith(f"{DIR}/") and name != f"{DIR}/checkpoint":
            assert archived.get(name) == data or (run_dir / name).read_bytes() == data, name
    assert archived["history.json"] == before["history.json"]
    assert ("model.keras" in archived) == ("model.keras" in before)
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3, 4]
    (event,) = [e for e in history["events"] if e["kind"] == "rollback"]
    assert event["position"] == 2.0 and event["from_global_step"] == 128 and event["global_step"] == 64
    assert "--from" not in result.stdout.split("resume with:")[-1]


@pytest.mark.parametrize("reference,expected", [("ckpt-999", "no committed checkpoint of that name"),
                                                ("epoch-3", "no committed checkpoint of that name"),
                                                ("yesterday", "expected ckpt-N or epoch-E"),
                                                ("epoch-2", "is damaged")])
def test_bad_rollback_reference_exits_2_and_moves_nothing(finished_run, reference, expected):
    run_dir, args = finished_run
    if reference == "epoch-2" and expected == "is damaged":
        status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
        number = next(m["number"] for m in status["milestones"] if m["epoch"] == 2)
        data = run_dir / DIR / f"ckpt-{number}.data-00000-of-00001"
        raw = bytearray(data.read_bytes())
        raw[len(raw) // 2] ^= 0x10
        data.write_bytes(bytes(raw))
    before = _files(run_dir)
    result = helpers.run(["train", "--run-dir", str(run_dir), *args, "--from", reference])
    assert result.returncode == errors.BAD_INPUT, result.stderr
    assert f"--from {reference}" in result.stderr and expected in result.stderr
    assert _files(run_dir) == before


def test_rollback_of_a_remote_run_on_a_new_node(s3_run_root, tmp_path):
    url, options = s3_run_root
    job = helpers.user_job(tmp_path / "elsewhere")
    args = ["--storage-options", json.dumps(options), "--job", str(job), "--no-tensorboard", "--epochs", "2",
            "--keep-every-epochs", "1"]
    first = helpers.run(["train", "--run-dir", url, "--staging-dir", str(tmp_path / "a"), *args])
    assert first.returncode == 0, first.stderr
    again = helpers.run(["train", "--run-dir", url, "--staging-dir", str(tmp_path / "b"), *args,
                         "--from", "epoch-1"])
    assert again.returncode == 0, again.stderr
    assert "rolled back to" in again.stderr and "at epoch 2 step 0/32" in again.stderr
    storage = open_storage(url, options)
    (record,) = json.loads(storage.read_text("rollbacks.json"))
    assert storage.listdir(f"{record['archive']}/{DIR}") and storage.exists(f"{record['archive']}/history.json")


PREDICT = """
import sys
import numpy as np, keras
model = keras.models.load_model(sys.argv[1])
x = np.load(sys.argv[2])
np.save(sys.argv[3], model.predict(x, verbose=0))
assert not any(m == "trainer" or m.startswith("trainer.") for m in sys.modules), "trainer was imported"
"""


def test_exported_models_load_without_trainer_and_predict_like_the_checkpoint(reference_run, tmp_path):
    """model.keras (end of training) and `export --from ckpt-N` load in a process that never
    imports trainer, and predict exactly what the restored checkpoint predicts."""
    status = json.loads(helpers.run(["status", str(reference_run), "--json"]).stdout)
    older = status["checkpoints"][-1]["number"]
    out = tmp_path / "older.keras"
    exported = helpers.run(["export", str(reference_run), str(out), "--from", f"ckpt-{older}"])
    assert exported.returncode == 0, exported.stderr
    x = np.random.default_rng(0).random((8, 16, 16, 1), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    for model_file, number in ((reference_run / "model.keras", status["latest"]["number"]), (out, older)):
        predicted = tmp_path / f"p{number}.npy"
        subprocess.run([sys.executable, "-c", PREDICT, str(model_file), str(tmp_path / "x.npy"), str(predicted)],
                       cwd=tmp_path, env=env, check=True, capture_output=True, timeout=300)
        expected = _checkpoint_predictions(reference_run, number, x)
        assert np.load(predicted).tobytes() == expected.tobytes(), number


def _checkpoint_predictions(run_dir, number, x):
    from trainer.building import build
    from trainer.checkpoint.store import CheckpointStore
    from trainer.cluster import distribute
    from trainer.config import TrainConfig
    from trainer.job import load
    config = json.loads((run_dir / "config.json").read_text())
    job = load(config["job"])
    job.choose(None, config["job_settings"])
    built = build(job, TrainConfig(str(run_dir)), distribute.setup("default"))
    store = CheckpointStore(built.groups, open_storage(str(run_dir)), str(run_dir / DIR), 3)
    store.restore(number)
    store.close()
    return built.model.predict(x, verbose=0)
