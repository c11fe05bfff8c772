"""SIGTERM at awkward moments: during start-up (imports, job set-up, restore), before
the first checkpoint, while saves are in flight. Each stop exits with 143 and the run
still ends bitwise equal to an uninterrupted one. The moments are random; every
assertion holds whichever phase a signal lands in."""
import random
import signal
import time

from tests import helpers


def test_sigterm_during_startup_and_saves_then_resume_bitwise(tmp_path, uninterrupted):
    rng = random.Random(3)
    job = helpers.user_job(tmp_path / "elsewhere")
    common = ["--job", str(job), "--no-tensorboard", "--examples", "2048"]
    reference = uninterrupted("user-2048", common)
    run_dir = tmp_path / "run"
    # every step saves, so signals land while a write is in flight; every batch takes >= 20 ms,
    # so the 192 steps take at least 3.8 s whatever the machine
    args = ["train", "--run-dir", str(run_dir), *common, "--save-every-steps", "1", "--sleep-s", "0.02"]
    phases = []
    for delay in (0.3, 1.0, 2.0, 3.0, 4.0):  # imports, job set-up, restore, training
        proc = helpers.start(args)
        time.sleep(delay + rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=120)[0]
        if proc.returncode == -signal.SIGTERM:  # before Python had installed any handler
            assert "[trainer]" not in out, out
            phases.append("interpreter start")
        elif proc.returncode == 0:  # the run had already finished
            assert "training complete" in out or "training already complete" in out, out
            phases.append("finished")
        else:
            assert proc.returncode == 128 + signal.SIGTERM, out
            assert "SIGTERM received: stopped at" in out and "resume with:" in out, out
            phases.append("before training" if "start-up, before training" in out else "training")
    last = 0
    for _ in range(2):  # mid-training, with a save at every step
        target = rng.randint(last + 1, last + 60)
        code, out = helpers.interrupt_at_step(args, signal.SIGTERM, target)
        assert code in (0, 128 + signal.SIGTERM), out
        if code:
            last = helpers.stop_of(out)[3]
    final = helpers.run(args)
    assert final.returncode == 0, final.stderr
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))
    print("phases hit:", phases)


SLOW_IMPORT = '''
import os, pathlib, sys, time
pathlib.Path({started!r}).touch()          # the trainer's handlers are installed by now
while not os.path.exists({release!r}):
    time.sleep(0.01)
sys.path.insert(0, {folder!r})
from my_job import *                        # noqa: F401,F403
'''


def test_sigint_before_training_saves_nothing(tmp_path):
    """The job's import waits for a file, so the signal lands before training by construction."""
    job = helpers.user_job(tmp_path / "elsewhere")
    started, release = tmp_path / "importing", tmp_path / "release"
    wrapper = tmp_path / "elsewhere" / "slow_job.py"
    wrapper.write_text(SLOW_IMPORT.format(started=str(started), release=str(release), folder=str(job.parent)))
    run_dir = tmp_path / "run"
    proc = helpers.start(["train", "--run-dir", str(run_dir), "--job", str(wrapper), "--no-tensorboard"])
    deadline = time.monotonic() + 120
    while not started.exists():
        assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    release.touch()
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signal.SIGINT, out
    assert "stopped at start-up, before training; no new checkpoint needed" in out
    assert not (run_dir / "checkpoints").exists() or not list((run_dir / "checkpoints").glob("*.commit.json"))
