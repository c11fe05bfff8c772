"""``train``'s set-up: the cluster, the run dir and its checks, then the chief's changes to it.

Order matters for "bad input changes nothing": :func:`open_session` only
reads the run dir; :func:`prepare_run_dir` (``--fresh`` archives,
``config.json``, ``--from``) runs once the job has imported, built its model
and data and they fit together.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import tensorflow as tf

from . import rundir
from .checkpoint import rollback
from .checkpoint.store import IncompatibleCheckpoint
from .cluster import distribute
from .cluster.requeue import job_end_time
from .config import ConfigError, TrainConfig, dumps
from .job import Job, describe, same_job
from .rundir import CHECKPOINTS_DIR, CONFIG_FILE
from .steering.blocking import held_during_connect
from .steering.notices import EndTime, Watcher
from .steering.requests import LrRequests
from .steering.signals import StopRequest
from .storage import Storage, open_storage
from .training.deadline import Deadlines

log = logging.getLogger("trainer")


@dataclass
class Session:
    """What every phase of ``train`` works with."""
    cfg: TrainConfig
    job: Job
    stop: StopRequest
    resume_command: str       # printed when the run stops
    cluster: distribute.Cluster
    storage: Storage
    requests: LrRequests      # the run dir's learning-rate requests
    deadlines: Deadlines      # the signals and preemption notices, and what they leave time for
    timings: dict = field(default_factory=dict)  # start-up phases, logged once restored
    started: float = field(default_factory=time.monotonic)  # the summary's time: this start's

    @property
    def chief(self) -> bool:
        return self.cluster.is_chief

    def checkpoint_dir(self) -> str:
        """Where TF writes and reads this process's checkpoints (staged when the run dir is remote:
        each worker other than the chief keeps its own copies of the chief's)."""
        worker = None if self.chief else self.cluster.index
        return rundir.local_dir(self.storage, CHECKPOINTS_DIR, self.cfg.staging_dir, worker)


def open_session(cfg: TrainConfig, job: Job, stop: StopRequest, resume_command: str, fresh: bool,
                 rollback_to: str | None) -> tuple[Session, rollback.Plan | None]:
    """Set up the cluster and check, only reading, the run dir, its requests, its config and
    ``--from``; the session and the rollback to make (on the chief)."""
    if fresh and rollback_to:
        raise ConfigError("from", "cannot be combined with --fresh", "--fresh starts over; --from goes back")
    # (a warning may come during start-up: the end time's lookup starts first, and the wait for
    # the other workers goes on through a warning that leaves time to train)
    deadlines = Deadlines(stop, None, slurm_end_time(), cfg.notice_margin_seconds)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    # before any other TF op; waits for every worker (at most cfg.peer_timeout_seconds)
    cluster = distribute.setup(cfg.strategy, cfg.cpu_devices, cfg.peer_timeout_seconds, deadlines.signal_stop,
                               lambda: held_during_connect(stop, cfg.peer_timeout_seconds))
    if cluster.workers > 1:
        log.info("%s", cluster.role())  # (after the handlers are back: a test may signal us on this line)
    storage = open_storage(cfg.run_dir, cfg.storage_options)
    rundir.for_training(storage)  # probes a remote store
    requests = LrRequests(storage, cfg.lr_poll_seconds)
    requests.refresh()  # a malformed request file stops us before anything is touched
    if not fresh:
        _check_config(storage, cfg, job)
    going_back = (rollback.plan(storage, rollback_to, os.environ.get("SLURM_JOB_ID"))
                  if rollback_to and cluster.is_chief else None)
    # (last: nothing above may fail with the watcher's threads started)
    deadlines.watcher = Watcher.for_choice(cfg.notices).start()
    return Session(cfg, job, stop, resume_command, cluster, storage, requests, deadlines), going_back


def slurm_end_time(env=os.environ) -> EndTime:
    """In a SLURM job, its end time, looked up off the training thread (for the warning signal)."""
    job = env.get("SLURM_JOB_ID")
    return EndTime((lambda: job_end_time(job)) if job else None)


def prepare_run_dir(s: Session, fresh: bool, going_back: rollback.Plan | None) -> dict | None:
    """The chief's changes to the run dir (the only process that makes any): ``--fresh``,
    torn writes, ``config.json``, ``--from``; the rollback's record, if one was made."""
    if not s.chief:
        return None
    if fresh:
        _archive(s.storage)
    torn = s.storage.remove_torn_writes()
    if torn:
        log.warning("removed %d temporary file(s) of writes cut short by a kill: %s", len(torn), ", ".join(torn))
    s.storage.write_text(CONFIG_FILE, dumps(_config(s.cfg, s.job)) + "\n")
    if not going_back:
        return None
    staged = s.checkpoint_dir() if s.storage.local_path(CHECKPOINTS_DIR) is None else None
    return rollback.execute(s.storage, going_back, staged)


def _config(cfg: TrainConfig, job: Job) -> dict:
    return {"job": job.name, "job_settings": job.settings_json(), "trainer": cfg.to_json(),
            "identity": {**job.identity(), **cfg.identity()}}


def _check_config(storage: Storage, cfg: TrainConfig, job: Job) -> None:
    """Refuse to resume a run with another job or settings that change the model or the data order."""
    try:
        saved = json.loads(storage.read_text(CONFIG_FILE))
    except FileNotFoundError:
        return
    except ValueError as exc:
        raise ConfigError("run_dir", f"{storage.url(CONFIG_FILE)} is not valid JSON ({exc})",
                          "restore it, or start over with --fresh") from None
    theirs = saved.get("identity") or {}
    mine = _config(cfg, job)["identity"]
    if not same_job(theirs.get("job"), mine["job"]):
        raise IncompatibleCheckpoint(
            f"{storage.url(CONFIG_FILE)}: this run was trained by job {describe(theirs.get('job'))}, not "
            f"{describe(mine['job'])}; resume it with --job {theirs.get('job')}, or use another --run-dir "
            "(or --fresh to archive it and start over)")
    diffs = [f"{k}: run has {theirs.get(k)!r}, given {v!r}" for k, v in mine.items() if k not in ("job", "settings")
             and theirs.get(k) != v]
    ours, old = mine["settings"], theirs.get("settings") or {}
    diffs += [f"{k}: run has {old.get(k)!r}, given {v!r}" for k, v in ours.items() if old.get(k) != v]
    diffs += [f"{k}: run has {v!r}, this job has no such setting" for k, v in old.items() if k not in ours]
    if diffs:
        raise IncompatibleCheckpoint(
            f"{storage.url(CONFIG_FILE)} was written with other settings ({'; '.join(diffs)}); "
            "resuming would restore a different model or data order. Use the run's own "
            "settings (see that file), another --run-dir, or --fresh to archive it and start over")
    before = (saved.get("trainer") or {}).get("epochs")
    if before != cfg.epochs:
        log.info("epochs changed from %s to %s for this run", before, cfg.epochs)


def _archive(storage: Storage) -> None:
    """--fresh: move an existing run aside; never delete it."""
    root = storage.local_path("")
    if root is None:
        if storage.listdir(""):
            raise ConfigError("fresh", f"{storage.root} is not empty and archiving a remote run "
                              "is not supported", "use a new --run-dir for a fresh start")
        return
    if os.path.isdir(root) and os.listdir(root):
        target = f"{root.rstrip(os.sep)}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(root, target)
        log.warning("--fresh: moved the existing run to %s", target)
    sys.stdout.flush()
