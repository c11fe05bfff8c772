"""SIGTERM at awkward moments: during start-up (imports, data set-up, restore),
before the first checkpoint, while saves are in flight. Each stop exits with
143 and the run still ends bitwise equal to an uninterrupted one."""
import random
import signal
import time

from tests import helpers


def test_sigterm_during_startup_and_saves_then_resume_bitwise(tmp_path, reference_run):
    rng = random.Random(3)
    run_dir = tmp_path / "run"
    # every step saves, so signals land while a write is in flight
    args = ["train", "--run-dir", str(run_dir), *helpers.TINY, "--save-every-steps", "1"]
    codes = []
    for delay in (0.3, 1.0, 2.0, 3.0, 4.0):  # import, data set-up, model build, restore
        proc = helpers.start(args)
        time.sleep(delay + rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
        codes.append(proc.returncode)
        assert proc.returncode == 128 + signal.SIGTERM, out
        assert "SIGTERM received: stopped at" in out and "resume with:" in out
    for _ in range(2):  # mid-training, with a save at every step
        code, out = helpers.interrupt_run(args, signal.SIGTERM, rng, epochs=3)
        assert code == 128 + signal.SIGTERM, out
    final = helpers.run(args)
    assert final.returncode == 0, final.stderr
    helpers.assert_bitwise_equal(helpers.latest_variables(reference_run), helpers.latest_variables(run_dir))


def test_sigint_before_training_saves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    proc = helpers.start(["train", "--run-dir", str(run_dir), *helpers.TINY])
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "no new checkpoint needed" in out
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("*.commit.json"))
