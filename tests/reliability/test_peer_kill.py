"""SIGKILL one or both workers of a two-worker run (TF_CONFIG on 127.0.0.1) at random moments,
from the first second of a start on: while importing, connecting, building, restoring,
training, saving, evaluating or finishing. Every surviving worker exits within the bound
(``--peer-timeout-seconds``) with the lost-worker code 6, never 0 before the run is complete;
every start resumes from the newest commit (never behind one), and the finished run is bitwise
equal to an uninterrupted one. The seed is in the report; ``PEER_KILL_SEED=n`` repeats a run."""
import json
import os
import random
import time

from tests import helpers
from trainer import errors
from trainer.checkpoint.index import DIR, committed

SEED = int(os.environ.get("PEER_KILL_SEED", random.SystemRandom().randrange(2**32)))  # in the report; set it to repeat a run
STARTS = 4
BOUND_S = 15
EXIT_SLACK_S = 15  # as in tests/test_worker_loss.py: the process's own exit
EARLY_S = 25  # half the kills land this many seconds after a start at most: imports, connecting, building
MOST_NEW_COMMITS = 12  # the others after a drawn number of new commits (one every 2 steps)
TOTAL_STEPS = 3 * helpers.TWO_WORKERS_STEPS
VICTIMS = {"chief": (0,), "worker 1": (1,), "both": (0, 1)}


def _newest(run_dir) -> int:
    try:
        return max(committed([p.name for p in (run_dir / DIR).iterdir()]), default=0)
    except FileNotFoundError:
        return 0


def _wait_for_commit(run_dir, number: int, procs, timeout_s: float = 300) -> None:
    """Until ckpt-``number`` (or a newer one) is committed, or a worker has ended."""
    deadline = time.monotonic() + timeout_s
    while _newest(run_dir) < number and all(p.poll() is None for p in procs):
        assert time.monotonic() < deadline, f"no ckpt-{number} within {timeout_s} s"
        time.sleep(0.02)


def test_sigkill_of_either_worker_at_any_moment_ends_the_others_within_the_bound(tmp_path, two_worker_reference,
                                                                                fault_report):
    rng = random.Random(SEED)
    fault_report["seed"] = SEED
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), *helpers.TWO_WORKERS, "--save-every-steps", "2",
            "--peer-timeout-seconds", str(BOUND_S)]
    for start in range(STARTS):
        newest_before = _newest(run_dir)
        who = rng.choice(sorted(VICTIMS))
        procs = helpers.start_workers(args)
        if rng.random() < 0.5:
            delay = rng.uniform(1.0, EARLY_S)
            fault_report["kills in the first seconds"] += 1
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and all(p.poll() is None for p in procs):
                time.sleep(0.05)
        else:
            _wait_for_commit(run_dir, newest_before + rng.randint(0, MOST_NEW_COMMITS), procs)
            time.sleep(rng.uniform(0, 0.5))
            fault_report["kills while training"] += 1
        for index in VICTIMS[who]:
            procs[index].kill()
        killed = time.monotonic()
        fault_report[f"SIGKILLs of {who}"] += 1
        for index, proc in enumerate(procs):
            out = proc.communicate(timeout=BOUND_S + 300)[0]
            took = time.monotonic() - killed
            if index in VICTIMS[who]:
                continue
            assert proc.returncode in (errors.DONE, errors.PEER_LOST), f"start {start} ({who} killed):\n{out}"
            assert took <= BOUND_S + EXIT_SLACK_S, f"start {start}: worker {index} exited {took:.1f} s after the kill"
            if proc.returncode == errors.DONE:  # only once the run is complete
                status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
                assert status["latest"]["global_step"] == TOTAL_STEPS, (start, status["latest"], out)
            else:
                fault_report["survivors exited 6"] += 1
            if f"resumed from {run_dir}/{DIR}/ckpt-" in out:
                assert f"resumed from {run_dir}/{DIR}/ckpt-{newest_before} at" in out, (start, newest_before, out)
        newest = _newest(run_dir)
        assert newest >= newest_before, f"start {start}: ckpt-{newest_before} was committed, newest is {newest}"
        if newest:
            from trainer.storage import open_storage
            helpers.assert_checkpoint_complete(open_storage(str(run_dir)), newest)
    results = helpers.finish(helpers.start_workers([*args, "--quiet"]))
    assert [code for code, _ in results] == [0, 0], results
    helpers.assert_bitwise_equal(helpers.latest_variables(two_worker_reference), helpers.latest_variables(run_dir))
    fault_report["commits lost"] = 0
