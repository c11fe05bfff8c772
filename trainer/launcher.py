"""submitit launcher: run ``train`` as a SLURM (or local) job that requeues itself.

The job object is a ``submitit.helpers.Checkpointable``. submitit installs its
own handler for the warning signal (USR2 by default); while training runs,
the trainer's own handlers replace it and only record the signal. Once the
trainer has committed its checkpoint at the step boundary and returned, the
saved submitit handler is called from normal code: it asks ``checkpoint()``
for the resubmission (cheap: the checkpoint is already on disk), decides
timeout vs. preemption (timeouts requeue up to ``max_num_timeout`` times,
preemptions always) and requeues with ``scontrol``.

With several tasks (``nodes=2, tasks_per_node=1``) each task is one worker of a
MultiWorkerMirroredStrategy (the workers find each other from SLURM's
environment); all stop at the same step, only the first task requeues, and the
others wait for that requeue to end them. A lost worker (exit code 6) is requeued
as ``slurm/train.sh`` requeues it, by every surviving task.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
import warnings
from typing import Callable

import submitit

from . import errors, rundir
from .steering.signals import CAUGHT

REQUEUE_WAIT_S = 300  # a task other than the first waits this long for the job's requeue to end it
EARLY_SIGNAL_S = 60  # sbatch(1), --signal: "may be sent up to 60 seconds earlier than specified"


class TrainingStopped(RuntimeError):
    """Training was interrupted and there is no submitit handler to requeue it."""


class TrainingFailed(RuntimeError):
    pass


class TrainingJob(submitit.helpers.Checkpointable):
    def __init__(self, train_args: list[str]):
        self.train_args = list(train_args)

    def __call__(self) -> dict:
        from .cli import parse_train
        from .run import train

        requeue_handlers = {sig: signal.getsignal(sig) for sig in CAUGHT}
        cfg, job, args = parse_train(self.train_args)
        outcome = train(cfg, job, fresh=args.fresh)
        if outcome.exit_code == errors.DONE:
            return outcome.final_metrics
        if errors.is_interrupted(outcome.exit_code):
            signum = outcome.exit_code - 128
            handler = _submitit_handler(requeue_handlers, signum)
            if handler is not None:
                handler(signum, None)  # checkpoint() + requeue + exit, on the job's first task
                # On any other task submitit leaves the requeue to the first one, which ends the
                # whole job; returning or raising here would write this task's result too early.
                time.sleep(REQUEUE_WAIT_S)
            raise TrainingStopped(f"stopped by {signal.Signals(signum).name} at global step "
                                  f"{outcome.state.global_step if outcome.state else '?'}; "
                                  "resubmit the same job to resume")
        if outcome.exit_code == errors.PEER_LOST and _requeued(outcome.exit_code):
            time.sleep(REQUEUE_WAIT_S)  # the requeue ends this task, as it ends the others
        raise TrainingFailed(f"train exited with code {outcome.exit_code} (see the job's log; "
                             "codes are listed in README)")

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The trainer committed its checkpoint before we got here; a new run of
        # the same arguments resumes from it.
        return submitit.helpers.DelayedSubmission(TrainingJob(self.train_args))


def _submitit_handler(handlers: dict, signum: int) -> Callable | None:
    """The requeueing handler submitit installed (bound to its warning signal)."""
    candidates = [handlers.get(signum)] + list(handlers.values())
    for handler in candidates:
        if callable(handler) and getattr(handler, "__name__", "") == "checkpoint_and_try_requeue":
            return handler
    return None


def _requeued(code: int, env=None, run: Callable = subprocess.run) -> bool:
    """A lost worker (code 6) inside SLURM: requeue the job as ``slurm/train.sh`` does (every
    surviving task asks; the first request wins); whether it was requeued."""
    env = os.environ if env is None else env
    if not env.get("SLURM_JOB_ID"):
        return False
    from .cluster import requeue
    return requeue.main([str(code)], env, run) == 0


def _run_dir(train_args: list[str]) -> str | None:
    for i, arg in enumerate(train_args):
        if arg.startswith("--run-dir="):
            return arg.split("=", 1)[1]
        if arg == "--run-dir" and i + 1 < len(train_args):
            return train_args[i + 1]
    return None


def launch(train_args: list[str], folder: str = "runs/submitit/%j", cluster: str | None = None,
           timeout_min: int = 60, signal_delay_s: int = 90, max_num_timeout: int = 20,
           **parameters) -> submitit.Job:
    """Submit ``python -m trainer train <train_args>`` (``--job`` included) and return the submitit job.

    ``parameters`` are passed to ``AutoExecutor.update_parameters`` (e.g.
    ``slurm_partition="gpu"``, ``gpus_per_node=1``). A bad ``--run-dir`` raises
    ``rundir.RunDirError`` (or ``StorageError`` when it cannot be read or written) before
    anything is submitted: a job that cannot start should not wait in a queue first.
    """
    run_dir = _run_dir(train_args)
    if run_dir is None:
        raise rundir.RunDirError("launch: no --run-dir among the trainer's arguments; expected e.g. --run-dir runs/x")
    rundir.precheck_training(run_dir)
    if cluster != "local" and timeout_min * 60 - signal_delay_s < EARLY_SIGNAL_S:
        warnings.warn(f"launch(timeout_min={timeout_min}, signal_delay_s={signal_delay_s}): SLURM may send the "
                      f"warning signal up to {EARLY_SIGNAL_S} s early, so it can reach the job before submitit's "
                      "handler exists and end it unrequeued; keep timeout_min * 60 - signal_delay_s >= "
                      f"{EARLY_SIGNAL_S}", stacklevel=2)
    executor = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=max_num_timeout)
    executor.update_parameters(timeout_min=timeout_min, slurm_signal_delay_s=signal_delay_s, **parameters)
    return executor.submit(TrainingJob(train_args))
