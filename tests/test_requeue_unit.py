"""The requeue decision and the scontrol call, driven with a fake clock and a fake scontrol."""
import subprocess

import pytest

from trainer.cluster import requeue


def test_decisions():
    assert not requeue.decide(0, 0).requeue
    for code in (2, 3, 4, 5):
        assert not requeue.decide(code, 0).requeue
    assert requeue.decide(138, 50).requeue                      # preemptions: always
    assert requeue.decide(143, 99, stop_kind="timeout").requeue
    assert not requeue.decide(138, 100, stop_kind="timeout").requeue
    assert requeue.decide(1, 2, max_crash_restarts=3).requeue
    assert not requeue.decide(1, 3, max_crash_restarts=3).requeue


def test_timeout_vs_preemption_uses_the_job_end_time():
    end = 10_000.0
    assert requeue.classify_stop(end - 30, end) == "timeout"
    assert requeue.classify_stop(end - 119, end) == "timeout"
    assert requeue.classify_stop(end - 3600, end) == "preemption"
    assert requeue.classify_stop(end - 30, None) == "preemption"


class FakeSlurm:
    """Stands in for subprocess.run of squeue/scontrol."""

    def __init__(self, end_time="2030-01-01T00:10:00", requeue_rc=0):
        self.calls = []
        self.end_time = end_time
        self.requeue_rc = requeue_rc

    def __call__(self, cmd, **kw):
        self.calls.append(cmd)
        if cmd[0] == "squeue":
            return subprocess.CompletedProcess(cmd, 0, stdout=self.end_time + "\n", stderr="")
        return subprocess.CompletedProcess(cmd, self.requeue_rc, stdout="", stderr="denied")


def _clock_at(text):
    import time
    return lambda: time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))


def test_main_requeues_an_interrupted_job_and_logs_timeout(capsys):
    fake = FakeSlurm()
    env = {"SLURM_JOB_ID": "42", "SLURM_RESTART_COUNT": "1"}
    rc = requeue.main(["138"], env=env, run=fake, clock=_clock_at("2030-01-01T00:09:10"))
    assert rc == 0 and fake.calls[-1] == ["scontrol", "requeue", "42"]
    assert "(timeout)" in capsys.readouterr().out


def test_main_preemption_of_an_array_task_requeues_only_that_task(capsys):
    fake = FakeSlurm()
    env = {"SLURM_JOB_ID": "77", "SLURM_ARRAY_JOB_ID": "70", "SLURM_ARRAY_TASK_ID": "7"}
    rc = requeue.main(["143"], env=env, run=fake, clock=_clock_at("2030-01-01T00:00:00"))
    assert rc == 0 and fake.calls[-1] == ["scontrol", "requeue", "70_7"]
    assert "(preemption)" in capsys.readouterr().out


@pytest.mark.parametrize("code", [0, 2, 4])
def test_main_does_not_requeue_finished_or_bad_runs(code):
    fake = FakeSlurm()
    assert requeue.main([str(code)], env={"SLURM_JOB_ID": "1"}, run=fake) == code
    assert not any(c[0] == "scontrol" for c in fake.calls)


def test_main_stops_requeueing_a_crashing_job():
    fake = FakeSlurm()
    env = {"SLURM_JOB_ID": "5", "SLURM_RESTART_COUNT": "3", "TRAINER_MAX_CRASH_RESTARTS": "3"}
    assert requeue.main(["1"], env=env, run=fake) == 1
    assert fake.calls == []


def test_failed_scontrol_keeps_the_exit_code(capsys):
    fake = FakeSlurm(requeue_rc=1)
    assert requeue.main(["138"], env={"SLURM_JOB_ID": "9"}, run=fake, clock=lambda: 0.0) == 138
    assert "failed: denied" in capsys.readouterr().out


def test_a_lost_worker_requeues_up_to_the_cap():
    from trainer import errors
    assert requeue.decide(errors.PEER_LOST, 0).requeue
    assert not requeue.decide(errors.PEER_LOST, 100, max_requeues=100).requeue


def test_the_launcher_requeues_a_lost_worker_inside_slurm_only():
    from trainer import errors
    from trainer.launcher import _requeued
    calls = []

    def run(command, **kw):
        calls.append(command)
        return subprocess.CompletedProcess(command, 0, "", "")
    assert not _requeued(errors.PEER_LOST, {}, run) and not calls
    assert _requeued(errors.PEER_LOST, {"SLURM_JOB_ID": "123"}, run)
    assert calls == [["scontrol", "requeue", "123"]]


def test_a_failing_squeue_raises_and_the_stop_still_requeues(capsys):
    class Busy(FakeSlurm):
        def __call__(self, cmd, **kw):
            if cmd[0] == "squeue":
                self.calls.append(cmd)
                return subprocess.CompletedProcess(cmd, 1, stdout="", stderr="Socket timed out on send/recv\n")
            return super().__call__(cmd, **kw)
    with pytest.raises(subprocess.SubprocessError, match="squeue exited with 1: Socket timed out"):
        requeue.job_end_time("3", Busy())
    assert requeue.job_end_time("3", FakeSlurm(end_time="N/A")) is None  # (no time limit)
    fake = Busy()
    assert requeue.main(["138"], env={"SLURM_JOB_ID": "3"}, run=fake, clock=lambda: 0.0) == 0
    assert fake.calls[-1] == ["scontrol", "requeue", "3"] and "(preemption)" in capsys.readouterr().out
