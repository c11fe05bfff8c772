"""LR override applied exactly once; history JSON/PNG consistent across resumes."""
import json
import signal

import numpy as np
import tensorflow as tf

from tests import helpers

SHORT = ["--preset", "tiny", "--train-size", "1024", "--val-size", "64", "--no-tensorboard"]


def _lr_in_checkpoint(run_dir):
    vars_ = helpers.latest_variables(run_dir)
    (key,) = [k for k in vars_ if "learning_rate" in k]
    return float(vars_[key])


def test_lr_override_applied_exactly_once_and_history_survives_resumes(tmp_path):
    run_dir = tmp_path / "run"
    base = ["train", "--run-dir", str(run_dir), *SHORT]
    first = helpers.run([*base, "--epochs", "1"])
    assert first.returncode == 0, first.stderr

    lr = helpers.run(["lr", str(run_dir), "1e-2"])
    assert lr.returncode == 0 and "will be applied" in lr.stdout
    assert (run_dir / "lr_override").read_text().strip() == "1e-2"
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert status["pending_lr_override"] == 0.01

    # second start: interrupted mid-epoch 2 after applying the override
    proc = helpers.start([*base, "--epochs", "3"])
    out = helpers.wait_for(proc, "Epoch 2/")
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=60)
    out += rest
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "learning rate 0.05 -> 0.01" in out
    assert not (run_dir / "lr_override").exists()
    consumed = json.loads((run_dir / "lr_override.consumed").read_text())
    assert consumed["lr"] == 0.01
    assert _lr_in_checkpoint(run_dir) == np.float32(0.01)

    # third start: resumes, must not apply anything again
    third = helpers.run([*base, "--epochs", "3"])
    assert third.returncode == 0, third.stderr
    assert "->" not in third.stderr
    assert _lr_in_checkpoint(run_dir) == np.float32(0.01)

    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]  # no duplicated epochs
    assert history["epochs"][0]["lr"] == np.float32(0.05)
    assert [round(e["lr"], 6) for e in history["epochs"][1:]] == [0.01, 0.01]
    kinds = [e["kind"] for e in history["events"]]
    assert kinds.count("lr_change") == 1 and kinds.count("resume") == 2
    change = next(e for e in history["events"] if e["kind"] == "lr_change")
    assert change["to"] == 0.01 and round(change["from"], 6) == 0.05 and change["position"] == 1.0
    for e in history["epochs"]:
        assert e["wall_time"] > 0 and {"loss", "accuracy", "val_loss", "val_accuracy"} <= e.keys()
    png = (run_dir / "history.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = tf.io.decode_png(png)
    assert decoded.shape[0] > 200 and decoded.shape[1] > 400

    status = helpers.run(["status", str(run_dir)])
    assert "complete" in status.stdout and "lr changes: 1" in status.stdout
