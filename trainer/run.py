"""``train``: set up, check the job, restore, apply pending LR requests, run the loop.

Order matters for "bad input changes nothing": the run directory is only
read until the job has imported, built its model and data and they fit
together; then ``--fresh`` archives, ``config.json`` is written and
checkpoints are touched.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
import traceback
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from . import exitcodes, export, rundir
from .checkpoint import rollback
from .checkpoint.store import CheckpointError, CheckpointStore, IncompatibleCheckpoint
from .cluster import distribute
from .config import ConfigError, TrainConfig, dumps
from .data import sources as data_mod
from .data.sources import DataError
from .job import Job, JobError, describe, same_job
from .rundir import CHECKPOINTS_DIR, CONFIG_FILE, TENSORBOARD_DIR
from .settings import SettingError
from .steering import lr_override
from .steering.requests import LrRequests, Steering
from .steering.signals import StopRequest
from .storage import Storage, StorageError
from .training import fit_options as fit_mod
from .training import history as monitor
from .training.callback_state import CallbackStateError, CallbackStates
from .training.loop import Interrupted, Loop
from .training.progress import Progress
from .training.saver import Saver
from .training.state import TrainerState
from .training.variables import ModelError, check_model, prepare, state_variable

log = logging.getLogger("trainer")

FINAL_FLUSH_TIMEOUT_S = 600.0


@dataclass
class Result:
    """What ``train`` did; ``exit_code`` is what the command line returns (see README)."""
    exit_code: int
    state: TrainerState | None = None
    checkpoint: int | None = None
    final_metrics: dict = field(default_factory=dict)

    @property
    def completed(self) -> bool:
        return self.exit_code == exitcodes.DONE

    @property
    def history(self) -> list[dict]:
        """One record per epoch (metrics, lr, wall time), across every resume."""
        return list(self.state.history["epochs"]) if self.state else []

    @property
    def keras_history(self) -> dict[str, list]:
        """What ``model.fit(...).history`` holds (``keras.callbacks.History.history``): each log's
        values over the epochs that logged it, across every resume."""
        out: dict[str, list] = {}
        for record in self.history:
            for key, value in record.items():
                if key not in monitor.RECORD_FIELDS:
                    out.setdefault(key, []).append(value)
        return out


def open_storage(cfg: TrainConfig) -> Storage:
    return Storage(cfg.run_dir, cfg.storage_options)


def staging_dir(cfg: TrainConfig, storage: Storage) -> str:
    """Where TF writes checkpoints before they are uploaded (remote runs only)."""
    if cfg.staging_dir:
        return cfg.staging_dir
    base = os.environ.get("TRAINER_STAGING_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "trainer", "staging"))
    return os.path.join(base, hashlib.sha1(storage.root.encode()).hexdigest()[:16])


def train(cfg: TrainConfig, job: Job, *, fresh: bool = False, rollback_to: str | None = None,
          resume_command: str = "", stop: StopRequest | None = None) -> Result:
    """Run or resume training (first going back to the snapshot ``rollback_to``, if given);
    never raises for the expected failures (see exitcodes)."""
    stop = stop or StopRequest()
    with stop:
        try:
            return _train(cfg, job, fresh, rollback_to, resume_command, stop)
        except (ConfigError, SettingError, lr_override.OverrideError, JobError, ModelError,
                rollback.RollbackError, distribute.ClusterError, fit_mod.FitOptionError, rundir.RunDirError) as exc:
            log.error("%s", exc)
            return Result(exitcodes.BAD_INPUT)
        except DataError as exc:
            log.error("%s", exc)
            return Result(exitcodes.DATA_ERROR)
        except StorageError as exc:
            log.error("%s", exc)
            return Result(exitcodes.STORAGE_ERROR)
        except CheckpointError as exc:
            log.error("%s", exc)
            return Result(exitcodes.CHECKPOINT_ERROR)


@dataclass
class Built:
    model: keras.Model
    train: object
    validation: object | None
    state_var: tf.Variable
    groups: dict
    callbacks: keras.callbacks.CallbackList | None = None  # the job's (see _callbacks), with
    callback_states: CallbackStates | None = None         # their state's variables in ``groups``


def build(job: Job, cfg: TrainConfig, cluster) -> Built:
    """The job's data and compiled model, checked against each other, under the strategy.

    Keras's session is cleared first: layer names (and so the checkpoint's keys) come from
    global counters, which a model built earlier in this process would have advanced."""
    keras.backend.clear_session()
    keras.utils.set_random_seed(cfg.seed)
    with cluster.strategy.scope():
        raw = _call(job, "build_data")
        train_raw, val_raw = raw if isinstance(raw, tuple) and len(raw) == 2 else (raw, None)
        try:
            train = data_mod.from_job(train_raw, f"job {job.label}: build_data's training data")
            validation = data_mod.validation_from_job(val_raw, train, f"job {job.label}: build_data's validation data")
        except ValueError as exc:
            raise JobError(str(exc)) from exc
        if train is None:
            raise JobError(f"job {job.label}: build_data returned no training data")
        class_weight = job.fit_options().class_weight
        if class_weight:
            train = fit_mod.ClassWeighted(train, class_weight)
        model = check_model(_call(job, "build_model"), job.label)
        groups = prepare(model, data_mod.batch_spec(train, cfg.seed), job.label, cluster.strategy)
    groups["trainer"] = {"state": state_variable()}
    if isinstance(train, data_mod.StreamingData):
        groups["data"] = train.bind(cluster.strategy)
    for source in (train, validation):
        if source is not None and source.warning:
            log.warning("%s", source.warning)
    return Built(model, train, validation, groups["trainer"]["state"], groups)


def _call(job: Job, name: str):
    try:
        return job.call(name)
    except (DataError, JobError):
        raise
    except Exception as exc:
        log.error("job %s: %s raised:\n%s", job.label, name, "".join(traceback.format_exception(exc)).rstrip())
        raise JobError(f"job {job.label}: {name} failed ({type(exc).__name__}: {exc}); see the traceback "
                       "above") from exc


def _train(cfg: TrainConfig, job: Job, fresh: bool, rollback_to: str | None, resume_command: str,
           stop: StopRequest) -> Result:
    if fresh and rollback_to:
        raise ConfigError("from", "cannot be combined with --fresh", "--fresh starts over; --from goes back")
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    cluster = distribute.setup(cfg.strategy, cfg.cpu_devices)  # before any other TF op; waits for every worker
    stop.reclaim()
    if cluster.workers > 1:
        log.info("%s", cluster.role())  # (after reclaim: a test may signal us on this line)
    chief = cluster.is_chief
    storage = open_storage(cfg)
    rundir.for_training(storage)  # probes a remote store
    requests = LrRequests(storage, cfg.lr_poll_seconds)
    requests.refresh()  # a malformed request file stops us before anything is touched
    if not fresh:
        _check_config(storage, cfg, job)
    going_back = (rollback.plan(storage, rollback_to, os.environ.get("SLURM_JOB_ID"))
                  if rollback_to and chief else None)
    # Stopped during start-up: nothing to save yet. Workers decide together, so that none
    # goes on alone into a collective that its stopped peers never join.
    startup = cluster.agreement.now(distribute.Decisions(stop=stop.signum))
    if startup.stop:
        return _stopped(startup.stop, stop, None, 0, None, None, resume_command)

    timings = {"imports": _process_age_s()}
    mark = time.monotonic()
    built = build(job, cfg, cluster)
    steps = built.train.steps_per_epoch
    log.info("job %s: %s, %d steps per epoch%s; %s", job.label, built.model.name, steps,
             f", validation {built.validation.steps_per_epoch} steps" if built.validation else "",
             cluster.describe())
    timings["job"], mark = time.monotonic() - mark, time.monotonic()

    local_dir = (storage.local_path(CHECKPOINTS_DIR) if not storage.is_remote
                 else os.path.join(staging_dir(cfg, storage), CHECKPOINTS_DIR))
    went_back = None
    if chief:  # only the chief changes the run dir
        if fresh:
            _archive(storage)
        torn = storage.remove_torn_writes()
        if torn:
            log.warning("removed %d temporary file(s) of writes cut short by a kill: %s", len(torn), ", ".join(torn))
        _write_config(storage, cfg, job)
        if going_back:
            went_back = rollback.execute(storage, going_back, local_dir if storage.is_remote else None)
    elif storage.is_remote:  # a worker's own copies of the chief's checkpoints
        local_dir = os.path.join(staging_dir(cfg, storage), f"worker-{cluster.index}", CHECKPOINTS_DIR)
    built.callbacks = _callbacks(job, built.model, cfg, storage, steps, chief)
    try:
        built.callback_states = CallbackStates(built.callbacks.callbacks if built.callbacks else [], built.model)
    except CallbackStateError as exc:
        raise JobError(f"job {job.label}: {exc}") from exc
    if built.callback_states.variables:
        built.groups["callbacks"] = built.callback_states.variables
    store = CheckpointStore(built.groups, storage, local_dir, cfg.max_to_keep, writes=chief,
                            on_device=cfg.snapshot_on_device, holds_replica_zero=cluster.replicas.first == 0)
    writers = _Writers(store, monitor.HistoryWriter(storage) if chief else None, cfg.flush_timeout_s)
    try:
        return _run(cfg, job, cluster, storage, built, store, writers, requests, went_back, timings, mark, stop,
                    resume_command)
    except (tf.errors.UnavailableError, tf.errors.DeadlineExceededError, tf.errors.AbortedError,
            tf.errors.CancelledError) as exc:
        if cluster.workers == 1:
            raise
        log.error("a worker of this job was lost (%s: %s); this worker stops too. The committed checkpoints "
                  "are intact: restart the job (SLURM requeues it) to resume from the newest", type(exc).__name__,
                  str(exc).strip().splitlines()[0][:300])
        return Result(exitcodes.PEER_LOST)
    finally:
        requests.close()
        writers.close()


def _run(cfg, job, cluster, storage, built, store, writers, requests, went_back, timings, mark, stop,
         resume_command) -> Result:
    chief, agreement, steps = cluster.is_chief, cluster.agreement, built.train.steps_per_epoch
    newest = None
    if chief:
        store.cleanup_stale()
        newest = store.newest_usable()
    # every worker waits here for the chief's start-up, then all restore what the chief chose
    number = agreement.share(newest["number"] if newest else None)
    store.follow(int(agreement.share(float(store.last_number)) or 0))
    manifest = store.restore(int(number)) if number else None
    timings["restore"] = time.monotonic() - mark
    log.info("start-up: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if v is not None))
    if manifest:
        state = TrainerState.from_json(built.state_var.numpy().decode())
        built.callback_states.resume_from(state.callbacks)
        kind = "rollback" if went_back else "resume"
        details = ({"from_global_step": went_back["from_global_step"], "archive": went_back["archive"]}
                   if went_back else {})
        monitor.add_event(state.history, kind, epoch=state.epoch, step_in_epoch=state.step_in_epoch,
                          steps_per_epoch=steps, global_step=state.global_step, time=time.time(), **details)
        log.info("resumed from %s/ckpt-%d at %s, lr %g", storage.url(CHECKPOINTS_DIR),
                 manifest["number"], state.position(steps), state.lr)
        before = manifest.get("replicas", cluster.replicas.total)
        if before != cluster.replicas.total:
            log.warning("ckpt-%d and the steps before it were written with %d replicas; this run has %d. "
                        "Training continues on exactly the examples, in exactly the order, the run would have "
                        "seen (each global batch now split %d ways); the weights will differ in the last bits "
                        "from a run that kept %d, since the gradients are summed in another order",
                        manifest["number"], before, cluster.replicas.total, cluster.replicas.total, before)
    else:
        state = TrainerState(lr=float(built.model.optimizer.learning_rate.numpy()), seed=cfg.seed)
        log.info("starting a new run in %s (%d epochs)", storage.root, cfg.epochs)

    saver = Saver(state, built.state_var, store, built.model.optimizer, steps, cfg.save_every_steps,
                  cfg.save_every_seconds, cfg.keep_every_epochs, cluster.replicas.total,
                  callback_states=built.callback_states,
                  data=built.train if isinstance(built.train, data_mod.StreamingData) else None)
    steering = Steering(built.model.optimizer, state, saver, writers, storage, steps, chief)
    pending = requests.immediate() if chief else None
    value = agreement.share(pending.value if pending else None)
    if value is not None:
        steering.apply(value, [pending] if pending else [], requests if chief else None,
                       "requested while the run was stopped")
    if writers.history:
        writers.history.submit_history(state.history)

    if state.epoch >= cfg.epochs or state.stopped_early:
        why = "stopped early by a callback" if state.stopped_early else f"{state.epoch}/{cfg.epochs} epochs"
        print(f"training already complete: {why} (global step {state.global_step}); nothing to do."
              + ("" if state.stopped_early else " Raise --epochs to train longer."), flush=True)
        _begin_and_end(built, state)
        return _finished(writers, state, None, built.model, cfg, storage, chief)
    stopping = agreement.now(distribute.Decisions(stop=stop.signum)).stop  # (signalled while building)
    if stopping:
        return _stopped(stopping, stop, state, steps, None, writers, resume_command)

    if chief:
        requests.start()
    loop = Loop(built.model, cluster.strategy, cluster.replicas, built.train, built.validation, cfg.seed,
                cfg.epochs, state, saver, stop, agreement,
                Progress(state, steps, cfg.epochs, cfg.quiet, cfg.log_every_steps), steering,
                requests if chief else None, writers.history, built.callbacks, built.callback_states,
                validation_freq=job.fit_options().validation_freq, max_steps=cfg.max_steps)
    try:
        loop.run()
    except Interrupted as exc:
        return _stopped(exc.signum, stop, state, steps, exc.checkpoint, writers, resume_command)
    limit = f" (--max-steps {cfg.max_steps})" if state.epoch < cfg.epochs and not state.stopped_early else ""
    print(f"training complete{limit}: {state.epoch} epochs, global step {state.global_step}, "
          f"final {json.dumps(_last_metrics(state))}", flush=True)
    return _finished(writers, state, saver.last_checkpoint, built.model, cfg, storage, chief)


def _callbacks(job: Job, model, cfg: TrainConfig, storage: Storage, steps: int, chief: bool):
    """The job's Keras callbacks (on every worker, as with model.fit; TensorBoard on the chief),
    called by the loop at the usual hooks."""
    callbacks = (list(_call(job, "callbacks")) if job.make_callbacks else []) + list(job.extra_callbacks)
    for cb in callbacks:
        if not isinstance(cb, keras.callbacks.Callback):
            raise JobError(f"job {job.label}: callbacks() must return keras.callbacks.Callback objects, "
                           f"got {type(cb).__name__}")
    if cfg.tensorboard and chief:
        tb_dir = (storage.local_path(TENSORBOARD_DIR) if not storage.is_remote
                  else os.path.join(staging_dir(cfg, storage), TENSORBOARD_DIR))
        callbacks.append(keras.callbacks.TensorBoard(tb_dir, update_freq="epoch"))
    if not callbacks:
        return None
    return keras.callbacks.CallbackList(callbacks, model=model, epochs=cfg.epochs, steps=steps, verbose=0)


def _begin_and_end(built: Built, state: TrainerState) -> None:
    """As fit with no epoch left to train: on_train_begin (state restored), on_train_end; e.g.
    EarlyStopping(restore_best_weights=True) puts the best weights into the exported model."""
    if built.callbacks:
        built.callback_states.train_begin(built.callbacks, mid_epoch=False)
        built.callbacks.on_train_end(_last_metrics(state))


@dataclass
class _Writers:
    """The run's background writers: checkpoints (with uploads) and the history files."""
    store: CheckpointStore
    history: monitor.HistoryWriter | None  # the chief's
    timeout_s: float

    def flush(self, why: str, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``, default the stop budget) until both have written everything."""
        timeout_s = timeout_s or self.timeout_s
        started = time.monotonic()
        ok = self.store.flush(timeout_s)
        if self.history:
            self.history.wait_idle(max(0.0, timeout_s - (time.monotonic() - started)))
        if self.store.storage.is_remote and self.store.writes:
            if ok:
                log.info("upload flushed (%s) in %.2fs", why, time.monotonic() - started)
            else:
                log.error("upload did not finish within %gs (%s); the newest checkpoint is kept "
                          "locally in %s and the next start on this machine uploads it",
                          timeout_s, why, self.store.local_dir)
        return ok

    def close(self) -> None:
        self.store.close()
        if self.history:
            self.history.stop()


def _finished(writers: _Writers, state: TrainerState, checkpoint: int | None, model, cfg: TrainConfig,
              storage: Storage, chief: bool = True) -> Result:
    """Done only once the final checkpoint is in the run dir (no kill deadline here, so the
    upload gets minutes); else a storage error: re-running on this machine uploads it."""
    ok = writers.flush("final", FINAL_FLUSH_TIMEOUT_S)
    if ok and cfg.export and chief:
        export.write_model(model, storage)
    return Result(exitcodes.DONE if ok else exitcodes.STORAGE_ERROR, state, checkpoint, _last_metrics(state))


def _stopped(signum, stop, state, steps, checkpoint, writers, resume_command) -> Result:
    if writers is not None:
        writers.flush("stop")
    name = distribute.signal_name(signum)
    took = time.monotonic() - stop.received_at if stop.received_at else 0.0
    where = f"checkpoint ckpt-{checkpoint}" if checkpoint else "no new checkpoint needed"
    position = state.position(steps) if state else "start-up, before training"
    print(f"\n[trainer] {name} received: stopped at {position}; {where} "
          f"({took:.2f}s from signal to exit).", flush=True)
    if resume_command:
        print(f"[trainer] resume with: {resume_command}", flush=True)
    return Result(exitcodes.interrupted(signum), state, checkpoint, _last_metrics(state) if state else {})


def _process_age_s() -> float | None:
    """Seconds since this process started (Linux), i.e. interpreter + imports so far."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def _last_metrics(state: TrainerState) -> dict:
    epochs = state.history["epochs"]
    if not epochs:
        return {}
    return {k: v for k, v in epochs[-1].items() if k not in ("global_step", "wall_time", "finished_at")}


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


def _write_config(storage: Storage, cfg: TrainConfig, job: Job) -> None:
    storage.write_text(CONFIG_FILE, dumps(_config(cfg, job)) + "\n")


def _archive(storage: Storage) -> None:
    """--fresh: move an existing run aside; never delete it."""
    root = storage.local_path("")
    if storage.is_remote:
        if storage.listdir(""):
            raise ConfigError("fresh", f"{storage.root} is not empty and archiving a remote run "
                              "is not supported", "use a new --run-dir for a fresh start")
        return
    if os.path.isdir(root) and os.listdir(root):
        target = f"{root.rstrip(os.sep)}.bak-{time.strftime('%Y%m%d-%H%M%S')}"
        os.rename(root, target)
        log.warning("--fresh: moved the existing run to %s", target)
    sys.stdout.flush()
