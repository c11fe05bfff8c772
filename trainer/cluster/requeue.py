"""After the trainer exits inside a SLURM batch job: requeue it or not.

``slurm/train.sh`` runs ``python -m trainer.requeue <exit code>`` once the
trainer has exited. The decision:

* 0 (done) and 2-5 (bad input, checkpoint, data, storage: a rerun would fail
  the same way): never requeue.
* 6 (a worker of a multi-worker job was lost; the survivors stopped): requeue,
  at most ``TRAINER_MAX_REQUEUES`` times.
* 128+N (stopped by a signal after committing a checkpoint): requeue. Whether
  this was the time limit or a preemption is logged; time-limit requeues are
  capped by ``TRAINER_MAX_REQUEUES`` (default 100), preemptions always requeue.
* anything else (a crash): requeue while ``SLURM_RESTART_COUNT`` is below
  ``TRAINER_MAX_CRASH_RESTARTS`` (default 3).

``scontrol``, the clock and the job's end time sit behind parameters so the
tests can drive them.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable

from .. import errors

NEVER_REQUEUE = {errors.BAD_INPUT, errors.CHECKPOINT_ERROR, errors.DATA_ERROR,
                 errors.STORAGE_ERROR}
TIMEOUT_SLACK_S = 120.0  # a stop this close to the end time counts as the time-limit warning


@dataclass(frozen=True)
class Decision:
    requeue: bool
    reason: str


def classify_stop(now: float, end_time: float | None) -> str:
    """"timeout" if the job was near its time limit when it stopped, else "preemption"."""
    if end_time is None:
        return "preemption"
    return "timeout" if end_time - now <= TIMEOUT_SLACK_S else "preemption"


def decide(code: int, restart_count: int, *, max_crash_restarts: int = 3, max_requeues: int = 100,
           stop_kind: str = "preemption") -> Decision:
    if code == errors.DONE:
        return Decision(False, "training complete")
    if code in NEVER_REQUEUE:
        return Decision(False, f"exit code {code} is not retryable (see README's exit codes)")
    if code == errors.PEER_LOST:
        if restart_count >= max_requeues:
            return Decision(False, f"a worker was lost {restart_count} times (TRAINER_MAX_REQUEUES={max_requeues})")
        return Decision(True, "a worker of the job was lost; the newest commit is intact")
    if errors.is_interrupted(code):
        if stop_kind == "timeout" and restart_count >= max_requeues:
            return Decision(False, f"time limit reached {restart_count} times (TRAINER_MAX_REQUEUES={max_requeues})")
        return Decision(True, f"stopped by signal {code - 128} ({stop_kind}) after a checkpoint")
    if restart_count < max_crash_restarts:
        return Decision(True, f"crash (exit code {code}), restart {restart_count + 1} of {max_crash_restarts}")
    return Decision(False, f"crash (exit code {code}) after {restart_count} restarts "
                           f"(TRAINER_MAX_CRASH_RESTARTS={max_crash_restarts})")


def job_target(env) -> str:
    """The requeue target: an array task requeues only itself."""
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env["SLURM_JOB_ID"]


def job_end_time(job: str, run=subprocess.run) -> float | None:
    """The job's scheduled end (time limit) from squeue, as a UNIX time; None for a job without
    one. A failing squeue (e.g. slurmctld too busy to answer) raises SubprocessError."""
    out = run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True)
    if out.returncode != 0:
        raise subprocess.SubprocessError(f"squeue exited with {out.returncode}: {out.stderr.strip()[:200]}")
    text = out.stdout.strip()
    if not text or text in ("N/A", "NONE", "Unknown"):
        return None
    try:
        return time.mktime(time.strptime(text, "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def _end_time_or_none(job: str, run) -> float | None:
    try:
        return job_end_time(job, run)
    except subprocess.SubprocessError:  # (the stop is then taken for a preemption: requeued all the same)
        return None


def main(argv=None, env=None, run: Callable = subprocess.run, clock: Callable[[], float] = time.time) -> int:
    argv = sys.argv[1:] if argv is None else argv
    env = os.environ if env is None else env
    code = int(argv[0])
    job = job_target(env)
    kind = classify_stop(clock(), _end_time_or_none(env["SLURM_JOB_ID"], run)) if errors.is_interrupted(code) else ""
    decision = decide(code, int(env.get("SLURM_RESTART_COUNT", 0) or 0),
                      max_crash_restarts=int(env.get("TRAINER_MAX_CRASH_RESTARTS", 3)),
                      max_requeues=int(env.get("TRAINER_MAX_REQUEUES", 100)), stop_kind=kind or "preemption")
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    if not decision.requeue:
        print(f"[requeue {stamp}] not requeueing job {job}: {decision.reason}", flush=True)
        return code
    print(f"[requeue {stamp}] requeueing job {job}: {decision.reason}", flush=True)
    result = run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        print(f"[requeue {stamp}] scontrol requeue {job} failed: {result.stderr.strip()}", flush=True)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
