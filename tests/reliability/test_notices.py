"""Preemption notices in real runs: a fake platform (stub metadata services on 127.0.0.1) announces
a preemption at a random step and sends SIGTERM, then SIGKILL, at the deadline. The run commits
at once, trains on, stops before the deadline with no more than a step and a save left beyond
the margin, exits with the requeue code (the platform's SIGTERM, if the
interpreter's teardown outlasts the deadline, changes nothing), and resumes bitwise equal to an uninterrupted run.

Every batch of the user job takes at least ``--sleep-s``, so no machine can finish the run
inside the notice windows."""
import json
import random
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import helpers
from tests.metadata_stubs import AwsImds, AzureEvents, GceMetadata, Platform

LONG = ["--examples", "1792", "--epochs", "6", "--no-tensorboard", "--quiet"]  # 6 x 56 steps (test_slurm's)
MARGIN = 5.0  # the default --notice-margin-seconds
DECISION = re.compile(r"stopping before the deadline: ([\d.]+) s left; \d+ step\(s\) take ([\d.]+) s, "
                      r"(?:an epoch's turn ([\d.]+) s, )?a save ([\d.]+) s")
RECORDING = """
import socket, sys
from trainer.cli import main
connects = []
real = socket.socket.connect
def record(self, address):
    connects.append(address)
    return real(self, address)
socket.socket.connect = record
code = main(sys.argv[1:])
print("CONNECTS", connects, flush=True)
sys.exit(code)
"""


@pytest.fixture
def stubs():
    made = {"aws": AwsImds(), "gce": GceMetadata(), "azure": AzureEvents()}
    yield made
    for stub in made.values():
        stub.close()


def watching(stubs, platform: str) -> dict:
    return {"TRAINER_NOTICES": platform, "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{stubs['aws'].address}",
            "GCE_METADATA_HOST": stubs["gce"].address,
            "TRAINER_AZURE_METADATA_ENDPOINT": f"http://{stubs['azure'].address}"}


def start(args, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=helpers.ROOT, env={**helpers.env(), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def preempted(args, env, rng, announce, window_s: float, label: str, before=None) -> dict:
    """One start: at a random step the platform announces (``announce(deadline)``), and kills at
    the deadline. Checks the stop; returns what it reported."""
    proc = start([*args, "--log-every-steps", "1"], env)
    out, reached = helpers.wait_for_step(proc, rng.randint(5, 40))
    assert reached is not None, out
    if before:
        out += before(proc)
    deadline = float(int(time.time()) + window_s)
    announce(deadline)
    platform = Platform(proc.pid, deadline)
    platform.start()
    committed = None
    for line in proc.stdout:  # (the stop line comes once the checkpoint is committed)
        out += line
        if committed is None and (" before the deadline" in line or " after the deadline" in line):
            committed = time.time()
    proc.wait(timeout=120)
    platform.cancelled.set()
    assert proc.returncode == 128 + signal.SIGTERM and "SIGTERM received" not in out, out
    assert committed is not None and committed < deadline, out  # before the platform's SIGTERM
    stop = re.search(label + r" at (\d\d:\d\d:\d\dZ); trained (\d+) more steps?; checkpoint ckpt-(\d+), (\d+) s "
                     r"before the deadline", out)
    assert stop, out
    assert stop.group(1) == time.strftime("%H:%M:%SZ", time.gmtime(deadline))
    decision = DECISION.search(out)
    assert decision, out
    step_s, epoch_end_s, save_s = (float(g or 0) for g in decision.groups()[1:])
    # used: no more than a step (an epoch's turn, if one came next) and a save left beyond the margin
    assert deadline - committed <= MARGIN + step_s + epoch_end_s + save_s, (deadline - committed, out)
    assert int(stop.group(2)) > 0, out  # trained on after the notice
    assert "committing a checkpoint now" in out, out
    helpers.stop_of(out)
    return {"out": out, "trained": int(stop.group(2)), "deadline": deadline}


def test_notices_from_each_cloud_are_used_and_the_run_resumes_bitwise(tmp_path, uninterrupted, stubs):
    rng = random.Random(24)
    job = helpers.user_job(tmp_path / "elsewhere")
    reference = uninterrupted("slurm-long", ["--job", str(job), *LONG])
    run_dir = tmp_path / "run"
    args = ["train", "--run-dir", str(run_dir), "--job", str(job), *LONG]
    slow = [*args, "--sleep-s", "0.2"]  # 5 steps a second at most: 336 steps outlast the three windows

    def rebalance_first(proc):  # advisory: one save, training goes on
        stubs["aws"].recommend_rebalance()
        return helpers.wait_for(proc, "AWS rebalance recommendation")

    aws = preempted(slow, watching(stubs, "aws"), rng, stubs["aws"].announce_interruption, 30.0,
                    "AWS spot notice: terminate", before=rebalance_first)
    assert "saving once; training goes on" in aws["out"]
    gce = preempted(slow, watching(stubs, "gce"), rng, stubs["gce"].announce_maintenance, 12.0,
                    "GCE host maintenance notice: TERMINATE_ON_HOST_MAINTENANCE")
    event = []
    azure = preempted(slow, watching(stubs, "azure"), rng,
                      lambda deadline: event.append(stubs["azure"].announce_preemption(deadline)), 12.0,
                      "Azure Scheduled Events notice: Preempt")
    assert stubs["azure"].acknowledged == event, azure["out"]  # told the platform to go ahead, once stopped

    history = json.loads((run_dir / "history.json").read_text())
    notices = [e for e in history["events"] if e["kind"] == "notice"]
    assert [n["source"] for n in notices] == ["aws-rebalance", "aws", "gce-maintenance", "azure"], notices
    for record, seen in zip(notices[1:], (aws, gce, azure)):
        assert record["deadline"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seen["deadline"]))
        assert record["stopped_at_step"] - record["global_step"] == seen["trained"], record
    status = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)
    assert [n["source"] for n in status["notices"]] == ["aws-rebalance", "aws", "gce-maintenance", "azure"]
    assert status["latest"]["reason"] == "notice"

    # The last start: `auto` on a machine whose DMI strings name no cloud opens no connection.
    laptop = tmp_path / "dmi"
    laptop.mkdir()
    (laptop / "sys_vendor").write_text("LENOVO\n")
    final = subprocess.run([sys.executable, "-c", RECORDING, *args], cwd=helpers.ROOT, capture_output=True,
                           text=True, timeout=600,
                           env={**helpers.env(), "TRAINER_NOTICES": "auto", "TRAINER_DMI_DIR": str(laptop)})
    assert final.returncode == 0, final.stdout + final.stderr
    assert "CONNECTS []" in final.stdout and "watching for preemption notices" not in final.stderr
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))


def test_two_workers_stop_together_before_a_notice_only_one_of_them_got(tmp_path, stubs):
    """Worker 1's VM gets the AWS notice; worker 0 watches a metadata service that answers
    garbage (one warning, training goes on). Both stop at the same step, before the deadline."""
    job = helpers.user_job(tmp_path / "elsewhere")
    garbage = AwsImds()
    garbage.fault = "garbage"
    args = ["train", "--run-dir", str(tmp_path / "run"), "--job", str(job), *LONG, "--sleep-s", "0.2",
            "--log-every-steps", "1"]
    hosts = [f"127.0.0.1:{p}" for p in helpers.free_ports(2)]
    envs = [{**watching(stubs, "aws"), "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{garbage.address}"},
            watching(stubs, "aws")]
    procs = [start(args, {**env, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts},
                                                          "task": {"type": "worker", "index": i}})})
             for i, env in enumerate(envs)]
    try:
        out, reached = helpers.wait_for_step(procs[1], random.Random(22).randint(10, 40))
        assert reached is not None, out
        deadline = float(int(time.time()) + 30)
        stubs["aws"].announce_interruption(deadline)
        platforms = [Platform(p.pid, deadline) for p in procs]
        for platform in platforms:
            platform.start()
        with ThreadPoolExecutor(2) as pool:  # (both drained at once: a full pipe would stall the collective)
            outputs = list(pool.map(lambda p: p.communicate(timeout=240)[0], procs))
        results = [(p.returncode, o) for p, o in zip(procs, outputs)]
    finally:
        garbage.close()
        for p in procs:
            p.kill() if p.poll() is None else None
    outs = [results[0][1], out + results[1][1]]
    assert [code for code, _ in results] == [128 + signal.SIGTERM] * 2, outs
    assert all("SIGKILL" not in p.killed for p in platforms), outs
    assert helpers.stop_of(outs[0])[:4] == helpers.stop_of(outs[1])[:4], outs
    assert "AWS spot notice on another worker" in outs[0], outs[0]
    assert re.search(r"AWS spot notice: terminate at \S+; trained \d+ more steps?; checkpoint ckpt-\d+, \d+ s "
                     r"before the deadline", outs[1]), outs[1]
    assert outs[0].count("the aws metadata service did not answer as expected") == 1, outs[0]
