"""Against a real single-node SLURM (slurm/dev-cluster/start.sh): time limits,
preemption, crashes, through slurm/train.sh and through the submitit launcher, with a
user's job written outside the repo (``--job``).

The time-limit runs cannot finish early on a fast machine: each batch of the user job
takes at least ``--sleep-s``. The warning signal carries the job's end time, and the
trainer trains until the last step that leaves a save and ``--notice-margin-seconds``
(5) before it: an allocation of one minute gives less than 55 s of training, of two
minutes less than 115 s. One task runs 336 steps of 330 ms, 110 s, in one-minute
allocations: at least two requeues on any machine. Two tasks run 392 steps, 129 s, in
two-minute ones: at least one. (An allocation trains what start-up leaves of its time;
two workers starting on a loaded machine can take most of a minute, but not of two.)
Few, slow steps, so that the uninterrupted reference runs, which
do not sleep, stay short; in few epochs, since each epoch's turn takes seconds of the
allocation. SLURM may send the warning up to 60 s earlier than asked (sbatch(1),
--signal), so an allocation may also stop during start-up; the assertions hold for that
branch too."""
import json
import os
import re
import shutil
import subprocess
import threading
import time

import pytest

from tests import helpers

pytestmark = pytest.mark.slurm

LONG = ["--examples", "1792", "--epochs", "6", "--no-tensorboard", "--quiet"]  # 6 x 56 steps
TWO_TASKS = ["--examples", "1792", "--epochs", "7", "--no-tensorboard", "--quiet"]  # 7 x 56 steps
SLOWER = ["--sleep-s", "0.33"]
MARGIN = 5.0  # the default --notice-margin-seconds
USED = re.compile(r"SLURM time limit warning: job ends at \S+; trained (\d+) more steps?; checkpoint ckpt-\d+, "
                  r"(\d+) s before the deadline")
DECISION = re.compile(r"stopping before the deadline: [\d.]+ s left; \d+ step\(s\) take ([\d.]+) s, "
                      r"(?:an epoch's turn ([\d.]+) s, )?a save ([\d.]+) s")
WARNING = "--signal=B:USR1@40"


@pytest.fixture(scope="module")
def job_file(tmp_path_factory):
    return str(helpers.user_job(tmp_path_factory.mktemp("user-jobs")))


def sh(*cmd, check=True) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=check).stdout.strip()


@pytest.fixture(scope="session")
def slurm_cluster():
    if not shutil.which("slurmctld"):
        pytest.skip("SLURM is not installed (.ci/run installs it)")
    if subprocess.run(["scontrol", "ping"], capture_output=True).returncode != 0:
        subprocess.run([str(helpers.ROOT / "slurm/dev-cluster/start.sh")], check=True)
    return True


def queued() -> set[str]:
    return set(sh("squeue", "-h", "-o", "%i", check=False).split()) if shutil.which("squeue") else set()


@pytest.fixture(autouse=True)
def cancel_what_the_test_left():
    """A test that fails or times out leaves its job requeueing itself, holding the node's CPUs
    for the tests after it; cancel every job that came while the test ran."""
    before = queued()
    yield
    left = queued() - before
    if left:
        sh("scancel", *sorted(left), check=False)


@pytest.fixture(scope="module")
def long_reference(uninterrupted, job_file):
    return uninterrupted("slurm-long", ["--job", job_file, *LONG])


def job_state(job: str) -> str:
    out = sh("sacct", "-n", "-X", "-P", "-j", job, "-o", "State", check=False)
    return out.splitlines()[0].split()[0] if out else ""


class Releaser(threading.Thread):
    """Starts requeued jobs after a few seconds instead of after their ~2 minute BeginTime.

    Not at once: slurmd refuses a relaunch within the second of the requeue
    ("Job credential revoked") and the job fails.
    """

    GRACE_S = 4

    def __init__(self):
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.first_seen = {}

    def run(self):
        while not self.stop.wait(1):
            for line in sh("squeue", "-h", "-o", "%i %T %r", check=False).splitlines():
                parts = line.split()
                if len(parts) >= 3 and parts[1] == "PENDING" and parts[2] == "BeginTime":
                    seen = self.first_seen.setdefault(parts[0], time.monotonic())
                    if time.monotonic() - seen >= self.GRACE_S:
                        sh("scontrol", "update", f"JobId={parts[0]}", "StartTime=now", check=False)
                        self.first_seen.pop(parts[0])


@pytest.fixture
def releaser():
    thread = Releaser()
    thread.start()
    yield thread
    thread.stop.set()


def wait_done(job: str, timeout=900) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = job_state(job)
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            if not sh("squeue", "-h", "-j", job, check=False):
                return state
        time.sleep(2)
    sh("scancel", job, check=False)
    raise AssertionError(f"job {job} did not finish in {timeout}s (state {job_state(job)})")


def allocations(log: str) -> list[str]:
    """The job's log, cut at each start of slurm/train.sh (the first run and each requeue)."""
    return re.split(r"\[train\.sh [^]]*\] job \d+ restart \d+ on ", log)[1:]


def sbatch(tmp_path, *args, env=None) -> str:
    return subprocess.run(["sbatch", "--parsable", *args], cwd=tmp_path, capture_output=True, text=True,
                          check=True, env={**os.environ, **(env or {})}).stdout.strip().split(";")[0]


def test_sbatch_time_limit_requeues_until_done_bitwise_equal(slurm_cluster, releaser, long_reference, job_file,
                                                             tmp_path):
    run_dir = tmp_path / "run"
    job = sbatch(tmp_path, "--time=1", WARNING, "--job-name=limit",
                 str(helpers.ROOT / "slurm/train.sh"), "--run-dir", str(run_dir), "--job", job_file, *LONG, *SLOWER)
    assert wait_done(job) == "COMPLETED"
    log = (tmp_path / f"slurm-limit-{job}.out").read_text()
    requeues = re.findall(r"\] requeueing job \d+: stopped by signal 10 \((timeout|preemption)\)", log)
    assert len(requeues) >= 2, log
    assert "timeout" in requeues
    # The warning's time is used: training goes on until a step and a save before the margin
    # (train.sh holds a warning that comes while the trainer starts until its handlers exist;
    # only a start-up that outlasts the allocation ends with SLURM's SIGTERM and no stop line).
    used = 0
    for part in allocations(log)[:-1]:
        stop, decision = USED.search(part), DECISION.search(part)
        if stop and decision:
            step_s, epoch_end_s, save_s = (float(g or 0) for g in decision.groups())
            assert int(stop.group(2)) <= MARGIN + step_s + epoch_end_s + save_s, part
            used += int(stop.group(1)) > 0
        elif stop:  # (start-up took the allocation up to the margin)
            assert "the deadline is too close for a save" in part, part
        else:
            assert "stopped at" not in part, part
    assert used >= 1, log
    resumes = re.findall(r"resumed from .* at epoch (\d+) step (\d+)/", log)
    assert len(resumes) >= 2, log
    assert re.search(r"not requeueing job \d+: training complete", log)
    helpers.assert_bitwise_equal(helpers.latest_variables(long_reference), helpers.latest_variables(run_dir))


@pytest.fixture(scope="module")
def long_two_worker_reference(job_file, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("slurm-two-workers") / "run"
    results = helpers.finish(helpers.start_workers(["train", "--run-dir", str(run_dir), "--job", job_file,
                                                    *TWO_TASKS]),
                             timeout=900)
    assert [code for code, _ in results] == [0, 0], results
    return run_dir


def test_two_task_job_requeues_on_its_time_limit_and_ends_bitwise_equal(slurm_cluster, releaser, job_file,
                                                                          long_two_worker_reference, tmp_path):
    """sbatch --ntasks=2: one worker per task (srun), MultiWorkerMirroredStrategy across them; the
    warning signal reaches both, they stop at the same step, the job requeues once per stop."""
    run_dir = tmp_path / "run"
    job = sbatch(tmp_path, "--ntasks=2", "--cpus-per-task=1", "--time=2", WARNING,
                 "--job-name=workers", str(helpers.ROOT / "slurm/train.sh"), "--run-dir", str(run_dir),
                 "--job", job_file, *TWO_TASKS, *SLOWER)
    assert wait_done(job) == "COMPLETED"
    log = (tmp_path / f"slurm-workers-{job}.out").read_text()
    assert "2 tasks: one worker each, started with srun" in log
    requeues = re.findall(r"\] requeueing job \d+: stopped by signal 10 \(timeout\)", log)
    assert len(requeues) >= 1, log
    starts = allocations(log)
    assert len(starts) == len(requeues) + 1, log
    in_training = 0
    for part in starts[:-1]:
        # Both workers stop at the same place. (SLURM may send the warning up to a minute early,
        # so it can land during start-up: train.sh holds it until the workers' handlers exist.
        # Neither prints a stop line only if start-up outlasted the allocation.)
        places = re.findall(r"stopped at (start-up, before training|epoch \d+ step \d+/\d+ \(global step \d+\));",
                            part)
        assert places == [] or (len(places) == 2 and places[0] == places[1]), part
        in_training += bool(places) and places[0].startswith("epoch")
    assert in_training >= 1, log  # 129 s of training, less than 115 s of it per allocation
    # A warning after the last epoch's end finishes the run (exit 0, no requeue): no allocation
    # stops past the last epoch, and the last one trains to the end or completes its last epoch.
    assert "stopped at epoch 8" not in log, log
    assert "training complete: 7 epochs" in starts[-1], starts[-1]
    helpers.assert_bitwise_equal(helpers.latest_variables(long_two_worker_reference),
                                 helpers.latest_variables(run_dir))


def test_submitit_launcher_requeues_and_returns_metrics(slurm_cluster, releaser, long_reference, job_file, tmp_path):
    from trainer.launcher import launch
    run_dir = tmp_path / "run"
    # submitit's warning goes to the Python process itself, which dies of it if it lands before
    # submitit's handler exists: 2 minutes with the warning at 40 s put it 20 to 80 s after
    # the start (SLURM's minute of slack), and 336 steps of 256 ms (86 s) cannot fit in 80.
    job = launch(["--run-dir", str(run_dir), "--job", job_file, *LONG, "--sleep-s", "0.256"],
                 folder=str(tmp_path / "submitit" / "%j"), cluster="slurm",
                 timeout_min=2, signal_delay_s=40, slurm_partition="debug", cpus_per_task=2)
    metrics = job.result()
    assert metrics["epoch"] == 6 and 0 < metrics["val_accuracy"] <= 1
    out = job.stdout() + (job.stderr() or "")
    assert len(re.findall(r"resumed from .* at epoch", out)) >= 1, out
    helpers.assert_bitwise_equal(helpers.latest_variables(long_reference), helpers.latest_variables(run_dir))


def test_submitit_two_tasks_stop_together_requeue_and_match_two_workers(slurm_cluster, releaser, job_file,
                                                                         tmp_path):
    """launch(..., tasks_per_node=2): one worker per task, found from SLURM's environment. A
    preemption signal to both tasks stops them at the same step; the first task requeues the
    job, which resumes and ends as two workers started by hand with TF_CONFIG do."""
    from trainer.launcher import launch
    args = ["--job", job_file, "--examples", "1024", "--epochs", "2", "--no-tensorboard", "--quiet"]
    by_hand = tmp_path / "by-hand"
    results = helpers.finish(helpers.start_workers(["train", "--run-dir", str(by_hand), *args]))
    assert [code for code, _ in results] == [0, 0], results
    run_dir = tmp_path / "run"
    gate = helpers.Gate(tmp_path / "gate")
    job = launch(["--run-dir", str(run_dir), *args, "--gate", str(gate.path), "--log-every-steps", "1"],
                 folder=str(tmp_path / "submitit" / "%j"), cluster="slurm", timeout_min=10,
                 slurm_partition="debug", tasks_per_node=2, cpus_per_task=1)
    gate.allow(20)  # each worker waits for its 21st batch
    deadline = time.monotonic() + 300
    while '"global_step": 20,' not in (job.task(0).stdout() or ""):
        assert time.monotonic() < deadline, "the job did not reach step 20"
        time.sleep(0.5)
    sh("scancel", "--signal=USR2", job.job_id)  # every task (not the batch shell): a preemption
    gate.allow(10_000)
    first, second = job.results()
    assert first == second and first["epoch"] == 2, (first, second)
    logs = [job.task(i).stdout() + (job.task(i).stderr() or "") for i in (0, 1)]
    stops = [re.findall(r"stopped at (epoch \d+ step \d+/\d+ \(global step \d+\))", log) for log in logs]
    assert len(stops[0]) == 1 and stops[0] == stops[1], logs
    assert all("resumed from" in log for log in logs), logs
    assert "worker 1 of 2 (reads the chief's checkpoints)" in logs[1]
    helpers.assert_bitwise_equal(helpers.latest_variables(by_hand), helpers.latest_variables(run_dir))


def test_preemption_without_time_limit_resumes(slurm_cluster, releaser, job_file, tmp_path):
    run_dir = tmp_path / "run"
    gate = helpers.Gate(tmp_path / "gate")
    args = ["--run-dir", str(run_dir), "--job", job_file, "--no-tensorboard", "--gate", str(gate.path),
            "--log-every-steps", "1"]
    job = sbatch(tmp_path, "--job-name=preempt", str(helpers.ROOT / "slurm/train.sh"), *args)
    log_path = tmp_path / f"slurm-preempt-{job}.out"
    gate.allow(45)  # the job waits in epoch 2 for its 46th batch
    deadline = time.monotonic() + 300
    while '"global_step": 45,' not in (log_path.read_text() if log_path.exists() else ""):
        assert time.monotonic() < deadline, "job did not reach step 45"
        time.sleep(0.2)
    sh("scancel", "--signal=USR1", "--batch", job)
    while "received SIGUSR1; forwarding" not in log_path.read_text():  # the batch script got it
        assert time.monotonic() < deadline, "the batch script never got the signal"
        time.sleep(0.2)
    gate.allow(10_000)
    assert wait_done(job) == "COMPLETED"
    log = log_path.read_text()
    assert re.search(r"requeueing job \d+: stopped by signal 10 \(preemption\)", log), log
    stop = helpers.stop_of(log)
    assert stop[3] >= 45 and f"at epoch {stop[0]} step {stop[1]}/32 (global step {stop[3]})" in log
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert status["latest"]["epoch"] == 3 and status["resumes"] == 1


def test_crashing_job_is_not_requeued_forever(slurm_cluster, releaser, tmp_path):
    fake = tmp_path / "crashing-python"
    fake.write_text("#!/bin/sh\nif [ \"$2\" = trainer ]; then echo boom >&2; exit 1; fi\nexec python3 \"$@\"\n")
    fake.chmod(0o755)
    job = sbatch(tmp_path, "--job-name=crash", str(helpers.ROOT / "slurm/train.sh"), "--run-dir", "x",
                 env={"TRAINER_PYTHON": str(fake), "TRAINER_MAX_CRASH_RESTARTS": "2"})
    wait_done(job, timeout=300)
    log = (tmp_path / f"slurm-crash-{job}.out").read_text()
    assert len(re.findall(r"\] requeueing job \d+: crash", log)) == 2, log
    assert "not requeueing job" in log and "after 2 restarts" in log


def test_a_signal_while_the_trainer_starts_waits_for_its_handlers(slurm_cluster, tmp_path):
    """The "trainer" sends SIGUSR1 to train.sh at its first moment and installs its handler two
    seconds later: forwarded at once, the signal would end it; train.sh holds it until then."""
    fake = tmp_path / "slow-to-trap-python"
    fake.write_text("#!/bin/sh\nif [ \"$2\" = trainer ]; then\n  kill -USR1 $PPID\n  sleep 2\n"
                    "  trap 'echo handled SIGUSR1; exit 0' USR1\n  while :; do sleep 0.1; done\nfi\n"
                    "exec python3 \"$@\"\n")
    fake.chmod(0o755)
    job = sbatch(tmp_path, "--job-name=early", str(helpers.ROOT / "slurm/train.sh"), "--run-dir", "x",
                 env={"TRAINER_PYTHON": str(fake)})
    assert wait_done(job, timeout=300) == "COMPLETED"
    log = (tmp_path / f"slurm-early-{job}.out").read_text()
    assert re.search(r"received SIGUSR1 while the trainer starts; forwarding it in [45] s", log), log
    assert "handled SIGUSR1" in log and "trainer exited with code 0" in log, log
