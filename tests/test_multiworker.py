"""Two workers on 127.0.0.1 under MultiWorkerMirroredStrategy (TF_CONFIG, subprocesses, CPU):
signals on one or both workers stop both at the same step with one committed checkpoint
and the same exit code, a killed worker makes the survivor exit with the requeue code,
and every resumed run ends bitwise equal to the uninterrupted two-worker run. The job's
ReduceLROnPlateau lowers the rate after epochs 2 and 3: a worker that resumed without the
chief's callback state would train on at another rate (and its gradients reach the chief's)."""
import json
import random
import re
import shutil
import signal
import time

import pytest

from tests import helpers
from trainer import errors

STEPS = 32  # per epoch (1024 examples, global batch 32: 16 per worker)


def _args(job, run_dir, *extra):
    return ["train", "--run-dir", str(run_dir), "--job", str(job), "--no-tensorboard", "--save-every-steps", "10",
            "--plateau", *extra]


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    return helpers.user_job(tmp_path_factory.mktemp("elsewhere"))


def _stop_lines(results):
    return [re.search(r"stopped at epoch \d+ step \d+/\d+ \(global step \d+\); checkpoint ckpt-\d+", out)
            for _, out in results]


@pytest.mark.parametrize("who,sig_name,seed", [("both", "TERM", 1), ("worker 1", "TERM", 2), ("chief", "INT", 3)])
def test_signals_stop_every_worker_at_the_same_step_and_resume_bitwise(job, two_worker_reference, tmp_path,
                                                                       who, sig_name, seed):
    sig = helpers.SIGNALS[sig_name]
    run_dir = tmp_path / "run"
    target = random.Random(seed).randint(1, 2 * STEPS)
    procs = helpers.start_workers(_args(job, run_dir, "--log-every-steps", "1"))
    out, reached = helpers.wait_for_step(procs[0], target)
    if reached is not None:
        for index in {"both": (0, 1), "worker 1": (1,), "chief": (0,)}[who]:
            procs[index].send_signal(sig)
    results = helpers.finish(procs)
    codes = [code for code, _ in results]
    if codes != [0, 0]:  # (both 0: the run ended before the signal landed)
        assert codes == [128 + sig] * 2, results
        lines = _stop_lines(results)
        assert all(lines) and lines[0].group(0) == lines[1].group(0), [o[-800:] for _, o in results]
        global_step = int(re.search(r"global step (\d+)", lines[0].group(0)).group(1))
        status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
        assert status["latest"]["global_step"] == global_step >= target
    results = helpers.finish(helpers.start_workers(_args(job, run_dir, "--quiet")))
    assert [code for code, _ in results] == [0, 0], results
    helpers.assert_bitwise_equal(helpers.latest_variables(two_worker_reference), helpers.latest_variables(run_dir))


def test_a_killed_worker_makes_the_survivor_exit_for_requeue(job, two_worker_reference, tmp_path, fault_report):
    run_dir = tmp_path / "run"
    gate = helpers.Gate(tmp_path / "gate")
    procs = helpers.start_workers(_args(job, run_dir, "--gate", str(gate.path), "--log-every-steps", "1"))
    gate.allow(45)
    out, reached = helpers.wait_for_step(procs[0], 45)
    assert reached == 45, out
    procs[1].kill()
    killed = time.monotonic()
    gate.allow(10_000)
    (code, out), _ = helpers.finish(procs, timeout=600)
    fault_report["survivor exit after SIGKILL of its peer (s)"] = round(time.monotonic() - killed, 1)
    assert code == errors.PEER_LOST, out
    assert "a worker of this job was lost" in out
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    newest = status["latest"]
    assert newest["global_step"] in (40, 45, 46)  # step 40's periodic save, or the epoch's last ones
    results = helpers.finish(helpers.start_workers(_args(job, run_dir, "--quiet")))
    assert [c for c, _ in results] == [0, 0], results
    assert f"resumed from {run_dir}/checkpoints/ckpt-{newest['number']} at" in results[0][1]
    helpers.assert_bitwise_equal(helpers.latest_variables(two_worker_reference), helpers.latest_variables(run_dir))


def test_two_workers_on_s3_only_the_chief_uploads_and_new_nodes_resume(job, two_worker_reference, s3_run_root,
                                                                        tmp_path):
    url, options = s3_run_root
    args = _args(job, url, "--storage-options", json.dumps(options), "--staging-dir", str(tmp_path / "a"))
    procs = helpers.start_workers([*args, "--log-every-steps", "1"])
    out, reached = helpers.wait_for_step(procs[0], 40)
    if reached is not None:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
    results = helpers.finish(procs)
    assert "committed to " + url in results[0][1] or [c for c, _ in results] == [0, 0], results
    assert "committed to " not in results[1][1], results  # the other worker never writes the run dir
    shutil.rmtree(tmp_path / "a")  # new nodes: empty staging folders
    args[args.index(str(tmp_path / "a"))] = str(tmp_path / "b")
    results = helpers.finish(helpers.start_workers([*args, "--quiet"]))
    assert [c for c, _ in results] == [0, 0], results
    assert "resumed from " + url in results[1][1], results
    helpers.assert_bitwise_equal(helpers.latest_variables(two_worker_reference),
                                 helpers.latest_variables(tmp_path / "b"))


def test_resuming_with_another_number_of_workers_says_it_is_not_bitwise(two_worker_reference, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(two_worker_reference, run_dir)
    result = helpers.run(["train", "--run-dir", str(run_dir), *helpers.TWO_WORKERS, "--epochs", "4", "--quiet"])
    assert result.returncode == 0, result.stderr
    assert "were written with 2 replicas; this run has 1" in result.stderr
    assert "training complete: 4 epochs" in result.stdout


def test_a_signal_during_start_up_stops_every_worker_at_the_same_place(job, tmp_path):
    """Worker 1 is signalled as soon as it has joined the cluster: still starting (or, on a
    fast machine, in its first steps, which the gate holds back). Both workers stop at the
    same place with the same code: neither goes on alone into a collective."""
    gate = helpers.Gate(tmp_path / "gate")
    procs = helpers.start_workers(_args(job, tmp_path / "run", "--gate", str(gate.path)))
    helpers.wait_for(procs[1], "worker 1 of 2 (reads the chief's checkpoints)")
    procs[1].send_signal(signal.SIGTERM)
    gate.allow(10_000)
    results = helpers.finish(procs)
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, [out for _, out in results]
    places = [re.search(r"stopped at (start-up, before training|epoch \d+ step \d+/\d+ \(global step \d+\));", out)
              for _, out in results]
    assert all(places) and places[0].group(1) == places[1].group(1), [out[-800:] for _, out in results]


def test_with_steps_per_execution_workers_stop_together_on_an_execution_boundary(job, two_worker_reference,
                                                                                  tmp_path):
    """8 steps per execution: the agreement rides on the executions that pass a multiple of 8
    global steps. Compared with the one-step-per-execution reference: a run's result does not
    depend on its steps per execution (tests/test_steps_per_execution.py)."""
    from tests.test_steps_per_execution import assert_on_execution_boundary
    n, run_dir = 8, tmp_path / "run"
    target = random.Random(4).randint(1, 2 * STEPS)
    procs = helpers.start_workers(_args(job, run_dir, "--steps-per-execution", str(n), "--log-every-steps", "1"))
    out, reached = helpers.wait_for_step(procs[0], target)
    if reached is not None:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
    results = helpers.finish(procs)
    if [code for code, _ in results] != [0, 0]:  # (both 0: the run ended before the signal landed)
        assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, results
        lines = _stop_lines(results)
        assert all(lines) and lines[0].group(0) == lines[1].group(0), [o[-800:] for _, o in results]
        assert_on_execution_boundary(helpers.stop_of(results[0][1]), n)
    results = helpers.finish(helpers.start_workers(_args(job, run_dir, "--steps-per-execution", str(n), "--quiet")))
    assert [code for code, _ in results] == [0, 0], results
    helpers.assert_bitwise_equal(helpers.latest_variables(two_worker_reference), helpers.latest_variables(run_dir))
