"""Learning-rate requests (while stopped, live, scheduled for an epoch) applied exactly
once; history JSON/PNG consistent across resumes. The user job's data waits at a gate,
so each request meets the run at a known step."""
import json

import numpy as np
import pytest
import tensorflow as tf

from tests import helpers


def _lr_in_checkpoint(run_dir):
    vars_ = helpers.latest_variables(run_dir)
    (key,) = [k for k in vars_ if "learning_rate" in k]
    return float(vars_[key])


def _setup(tmp_path):
    gate = helpers.Gate(tmp_path / "gate")
    job = helpers.user_job(tmp_path / "elsewhere")
    run_dir = tmp_path / "run"
    base = ["train", "--run-dir", str(run_dir), "--job", str(job), "--no-tensorboard", "--save-every-steps", "10"]
    return gate, run_dir, base


def _read_until(proc, needle: str) -> str:
    return helpers.wait_for(proc, needle, timeout=120)


def test_lr_request_while_stopped_is_applied_once_and_history_survives_resumes(tmp_path):
    gate, run_dir, base = _setup(tmp_path)
    gate.allow(10_000)
    first = helpers.run([*base, "--gate", str(gate.path), "--epochs", "1"])
    assert first.returncode == 0, first.stderr

    lr = helpers.run(["lr", str(run_dir), "1e-2"])
    assert lr.returncode == 0 and "a stopped run applies it when it resumes" in lr.stdout
    assert (run_dir / "lr_override").read_text().strip() == "1e-2"
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert status["pending_lr_requests"] == [{"lr": 0.01, "at_epoch": None, "file": "lr_override"}]

    gate.allow(0)
    proc = helpers.start([*base, "--gate", str(gate.path), "--epochs", "3", "--log-every-steps", "1"])
    out = helpers.gated_stop(proc, gate, 40)  # epoch 2, step 8
    assert "learning rate 0.05 -> 0.01 (requested while the run was stopped" in out
    assert not (run_dir / "lr_override").exists()
    assert json.loads((run_dir / "lr_override.consumed").read_text())["lr"] == 0.01
    assert _lr_in_checkpoint(run_dir) == np.float32(0.01)

    third = helpers.run([*base, "--gate", str(gate.path), "--epochs", "3"])
    assert third.returncode == 0, third.stderr
    assert "->" not in third.stderr
    assert _lr_in_checkpoint(run_dir) == np.float32(0.01)

    history = json.loads((run_dir / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]  # no duplicated epochs
    assert [round(e["lr"], 6) for e in history["epochs"]] == [0.05, 0.01, 0.01]
    kinds = [e["kind"] for e in history["events"]]
    assert kinds.count("lr_change") == 1 and kinds.count("resume") == 2
    change = next(e for e in history["events"] if e["kind"] == "lr_change")
    assert change["to"] == 0.01 and round(change["from"], 6) == 0.05 and change["position"] == 1.0
    for e in history["epochs"]:
        assert e["wall_time"] > 0 and {"loss", "accuracy", "val_loss", "val_accuracy"} <= e.keys()
    png = (run_dir / "history.png").read_bytes()
    decoded = tf.io.decode_png(png)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and decoded.shape[0] > 200 and decoded.shape[1] > 400

    status = helpers.run(["status", str(run_dir)])
    assert "complete" in status.stdout and "lr changes: 1" in status.stdout


@pytest.mark.parametrize("replicas", [1, 2])
def test_live_lr_change_applies_at_a_step_boundary_exactly_once(tmp_path, replicas):
    gate, run_dir, base = _setup(tmp_path)
    base += ["--cpu-devices", str(replicas)] if replicas > 1 else []
    proc = helpers.start([*base, "--gate", str(gate.path), "--epochs", "3", "--log-every-steps", "1",
                          "--lr-poll-seconds", "0.5"])
    gate.allow(20)
    out, reached = helpers.wait_for_step(proc, 20)
    assert reached == 20, out
    lr = helpers.run(["lr", str(run_dir), "0.02"])
    assert lr.returncode == 0 and "a run that is training applies it at a step boundary" in lr.stdout
    out += _read_until(proc, "found a learning-rate request")  # the poller saw it while the run waited
    gate.allow(21)
    out += _read_until(proc, "learning rate 0.05 -> 0.02 (live")
    assert out.splitlines()[-1].endswith("at epoch 1 step 21/32 (global step 21))"), out[-500:]
    out += helpers.gated_stop(proc, gate, 30)
    assert (f"MirroredStrategy over {replicas} CPU devices" if replicas > 1 else "; 1 CPU\n") in out
    assert (run_dir / "lr_override.consumed").exists() and not (run_dir / "lr_override").exists()

    final = helpers.run([*base, "--gate", str(gate.path), "--epochs", "3"])
    assert final.returncode == 0, final.stderr
    assert "->" not in final.stderr
    assert _lr_in_checkpoint(run_dir) == np.float32(0.02)
    history = json.loads((run_dir / "history.json").read_text())
    changes = [e for e in history["events"] if e["kind"] == "lr_change"]
    assert len(changes) == 1 and changes[0]["global_step"] == 21 and changes[0]["to"] == 0.02
    assert [round(e["lr"], 6) for e in history["epochs"]] == [0.02, 0.02, 0.02]


def test_scheduled_lr_change_applies_at_that_epochs_first_step_across_an_interruption(tmp_path):
    gate, run_dir, base = _setup(tmp_path)
    reference = tmp_path / "uninterrupted"
    for target in (run_dir, reference):
        lr = helpers.run(["lr", str(target), "0.01", "--at-epoch", "2", "--create"])
        assert lr.returncode == 0 and "applied when epoch 2 begins" in lr.stdout, lr.stdout
    gate.allow(10_000)
    whole = helpers.run([*base[:2], str(reference), *base[3:], "--gate", str(gate.path), "--epochs", "3"])
    assert whole.returncode == 0, whole.stderr

    gate.allow(0)
    proc = helpers.start([*base, "--gate", str(gate.path), "--epochs", "3", "--log-every-steps", "1"])
    out = helpers.gated_stop(proc, gate, 50)  # epoch 2 (index 1): not yet
    assert "->" not in out and (run_dir / "lr_override.epoch-2").exists()
    final = helpers.run([*base, "--gate", str(gate.path), "--epochs", "3"])
    assert final.returncode == 0, final.stderr
    assert "learning rate 0.05 -> 0.01 (scheduled for epoch 2" in final.stderr
    assert "at epoch 3 step 0/32 (global step 64))" in final.stderr
    for target in (run_dir, reference):
        history = json.loads((target / "history.json").read_text())
        (change,) = [e for e in history["events"] if e["kind"] == "lr_change"]
        assert change["position"] == 2.0 and change["global_step"] == 64
        assert (target / "lr_override.epoch-2.consumed").exists()
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))
