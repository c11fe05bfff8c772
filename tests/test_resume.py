"""Interrupt real training processes with real signals and resume them: the end result
must be bitwise identical to an uninterrupted run, for the reference job, the digits
job (Dropout) and a user's job written outside the repo (own train_step, callback).

Signals go out when the process reports a given global step; where a test needs the
stop to land at a known place it holds the user job's data at a gate, so no
assertion depends on how fast the machine is."""
import json
import random
import signal

import pytest

from tests import helpers

DIGITS, DIGITS_STEPS = helpers.DIGITS, helpers.DIGITS_STEPS


def user_args(tmp_path, *extra):
    job = helpers.user_job(tmp_path / "elsewhere")
    return ["--job", str(job), "--no-tensorboard", "--save-every-steps", "10", *extra]


@pytest.mark.parametrize("job,sig_name,seed", [("reference", "TERM", 1), ("digits", "TERM", 3), ("user", "INT", 4)])
def test_random_interrupts_end_bitwise_equal(tmp_path, uninterrupted, job, sig_name, seed):
    args, steps = {"reference": (helpers.TINY, helpers.TINY_STEPS), "digits": (DIGITS, DIGITS_STEPS),
                   "user": (user_args(tmp_path), 32)}[job]
    reference = uninterrupted(job, args)
    run_dir = tmp_path / "run"
    helpers.interrupt_randomly(run_dir, args, helpers.SIGNALS[sig_name], random.Random(seed), 3 * steps)
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))
    mine = json.loads((run_dir / "history.json").read_text())["epochs"]
    theirs = json.loads((reference / "history.json").read_text())["epochs"]
    assert [e["epoch"] for e in mine] == [1, 2, 3]
    for a, b in zip(mine, theirs):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == b[key], (key, a, b)


def test_gated_stop_mid_epoch_resumes_exactly_with_custom_step_and_callback(tmp_path, uninterrupted):
    """The user's data is held at a gate, so the stop lands mid-epoch by construction; the
    callback sees every epoch end exactly once; the model's own train_step ran every step."""
    gate = helpers.Gate(tmp_path / "gate")
    epochs_file = tmp_path / "epochs.log"
    args = user_args(tmp_path, "--gate", str(gate.path), "--epoch-log", str(epochs_file))
    run_dir = tmp_path / "run"
    proc = helpers.start(["train", "--run-dir", str(run_dir), *args, "--log-every-steps", "1"])
    held = 45  # epoch 2, step 13 of 32
    out = helpers.gated_stop(proc, gate, held)
    epoch, step, steps, global_step, _ = helpers.stop_of(out)
    # the signal lands while step 46 waits for its batch, or just before: either way mid-epoch 2
    assert (epoch, steps) == (2, 32) and global_step in (held, held + 1) and step == global_step - 32
    assert epochs_file.read_text().splitlines()[0].startswith("epoch 1 ")

    final = helpers.run(["train", "--run-dir", str(run_dir), *args])
    assert final.returncode == 0, final.stderr
    assert f"at epoch 2 step {step}/32 (global step {global_step})" in final.stderr
    lines = epochs_file.read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == ["1", "2", "3"], lines  # every epoch end exactly once
    reference = uninterrupted("user", user_args(tmp_path))
    mine, theirs = helpers.latest_variables(run_dir), helpers.latest_variables(reference)
    helpers.assert_bitwise_equal(theirs, mine)
    (custom,) = [k for k in mine if "custom_steps" in k]
    assert float(mine[custom]) == 3 * 32  # the job's own train_step ran at every step
    history = json.loads((run_dir / "history.json").read_text())
    assert [f"{e['loss']:.6f}" for e in history["epochs"]] == [ln.split()[3] for ln in lines]


def test_second_signal_aborts_at_once(tmp_path):
    gate = helpers.Gate(tmp_path / "gate")
    proc = helpers.start(["train", "--run-dir", str(tmp_path / "run"), *user_args(tmp_path),
                          "--gate", str(gate.path), "--log-every-steps", "1"])
    gate.allow(5)
    out, reached = helpers.wait_for_step(proc, 5)
    assert reached == 5, out
    proc.send_signal(signal.SIGTERM)  # the trainer waits at the gate: both signals are pending
    proc.send_signal(signal.SIGINT)
    gate.allow(10_000)
    out += proc.communicate(timeout=60)[0]
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), out
    assert "second signal" in out and "aborting now" in out, out
    assert "resume with" not in out  # no flush: the abort did not wait for a save
