"""Interrupt a real training process with real signals and resume it: the end
result must be bitwise identical to an uninterrupted run."""
import json
import random
import re
import signal

import pytest

from tests import helpers


@pytest.mark.parametrize("sig_name,seed", [("TERM", 1), ("INT", 2)])
def test_interrupted_runs_end_bitwise_equal(tmp_path, reference_run, sig_name, seed):
    rng = random.Random(seed)
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), *helpers.TINY]
    sig = helpers.SIGNALS[sig_name]
    stops = []
    for _ in range(3):
        code, out = helpers.interrupt_run(args, sig, rng, epochs=3)
        if code == 0:  # finished before the signal landed: fine, but rare
            break
        assert code == 128 + sig, out
        match = re.search(r"stopped at epoch (\d+) step (\d+)/(\d+) \(global step (\d+)\); "
                          r"checkpoint ckpt-(\d+)", out)
        assert match, out
        assert f"resume with: python -m trainer train --run-dir {run_dir}" in out
        stops.append(tuple(int(g) for g in match.groups()))
        # the flushed checkpoint holds exactly the step where we stopped: zero steps lost
        status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
        assert status["latest"]["global_step"] == stops[-1][3]
        assert status["latest"]["reason"] in ("signal", "epoch end")
    final = helpers.run(args)
    assert final.returncode == 0, final.stdout + final.stderr
    assert stops, "no interruption happened"
    assert any(0 < s[1] < s[2] for s in stops), f"no stop was mid-epoch: {stops}"
    last = stops[-1]
    assert f"at epoch {last[0]} step {last[1]}/{last[2]} (global step {last[3]})" in final.stderr
    helpers.assert_bitwise_equal(helpers.latest_variables(reference_run), helpers.latest_variables(run_dir))
    history = json.loads((run_dir / "history.json").read_text())
    reference = json.loads((reference_run / "history.json").read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    for mine, theirs in zip(history["epochs"], reference["epochs"]):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert mine[key] == theirs[key], (key, mine, theirs)
    assert sum(e["kind"] == "resume" for e in history["events"]) == len(stops)


def test_second_signal_aborts_at_once(tmp_path):
    proc = helpers.start(["train", "--run-dir", str(tmp_path / "run"), *helpers.TINY,
                          "--save-every-steps", "1000"])
    helpers.wait_for(proc, "Epoch 1/")
    proc.send_signal(signal.SIGTERM)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode in (128 + signal.SIGINT, 128 + signal.SIGTERM), out
    assert "second signal" in out and "aborting now" in out, out
    assert "stopped at" not in out  # no flush: the abort did not wait for a save
