"""``train``: the phases of a run, wired together.

Set up and check (``session.open_session``, only reading the run dir), build
the job, prepare the run dir (``session.prepare_run_dir``), restore, apply
pending learning-rate requests, train, then finish or stop. Expected
failures are :class:`trainer.errors.TrainerError`: ``train`` reports them and
returns their exit code.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shlex
import time
from dataclasses import dataclass, field

from . import errors, export
from .building import Built, add_callbacks, build
from .checkpoint.store import CheckpointStore
from .cluster import distribute, peers
from .config import TrainConfig
from .data.streaming import StreamingData
from .errors import TrainerError, report
from .job import Job
from .rundir import CHECKPOINTS_DIR, EVENTS_FILE, MODEL_FILE, local_dir
from .session import Session, open_session, prepare_run_dir
from .steering.blocking import Guard
from .steering.signals import StopRequest
from .training.events import NO_EVENTS, Events
from .training.history import HistoryWriter
from .training.history_format import RECORD_FIELDS, add_event
from .training.loop import Interrupted, Loop
from .training.lr_change import Steering
from .training.progress import Progress, format_logs
from .training.saver import CheckpointContents, Saver, SaveSchedule
from .training.state import TrainerState
from .training.writers import Writers

log = logging.getLogger("trainer")

FINAL_FLUSH_TIMEOUT_S = 600.0


@dataclass
class Result:
    """What ``train`` did; ``exit_code`` is what the command line returns (see README)."""
    exit_code: int
    state: TrainerState | None = None
    checkpoint: int | None = None
    final_metrics: dict = field(default_factory=dict)
    model: str | None = None  # where the model was exported (model.keras), if it was

    @property
    def completed(self) -> bool:
        return self.exit_code == errors.DONE

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
                if key not in RECORD_FIELDS:
                    out.setdefault(key, []).append(value)
        return out


@dataclass
class Training:
    """A run once its job is built: what restoring, steering and the loop act on."""
    built: Built
    store: CheckpointStore
    writers: Writers
    went_back: dict | None  # the record of a rollback made at this start
    built_at: float         # time.monotonic() once the job was built: restoring is timed from here
    events: Events = NO_EVENTS  # the chief's events.jsonl
    state: TrainerState | None = None
    saver: Saver | None = None
    steering: Steering | None = None

    @property
    def steps(self) -> int:
        return self.built.train.steps_per_epoch


def train(cfg: TrainConfig, job: Job, *, fresh: bool = False, rollback_to: str | None = None,
          resume_command: str = "", stop: StopRequest | None = None) -> Result:
    """Run or resume training (first going back to the snapshot ``rollback_to``, if given).
    Never raises for an expected failure: it is reported in one line and returned as its exit code."""
    stop = stop or StopRequest()
    with stop:
        try:
            return _train(cfg, job, fresh, rollback_to, resume_command, stop)
        except TrainerError as exc:
            return Result(report(exc))


def _train(cfg: TrainConfig, job: Job, fresh: bool, rollback_to: str | None, resume_command: str,
           stop: StopRequest) -> Result:
    try:
        s, going_back = open_session(cfg, job, stop, resume_command, fresh, rollback_to)
    except peers.StoppedWaiting as exc:  # (for the other workers: nothing to save yet)
        _say_stopped(exc.signum, stop, "start-up, while waiting for the other workers", "no new checkpoint needed",
                     resume_command)
        return Result(errors.interrupted(exc.signum))
    try:
        return _started(s, fresh, going_back)
    except distribute.PEER_ERRORS as exc:
        if s.cluster.workers == 1:
            raise
        log.error("a worker of this job was lost (%s: %s); this worker stops too. The committed checkpoints "
                  "are intact: restart the job (SLURM requeues it) to resume from the newest", type(exc).__name__,
                  str(exc).strip().splitlines()[0][:300])
        return Result(errors.PEER_LOST)
    finally:
        s.deadlines.close()


def _started(s: Session, fresh: bool, going_back) -> Result:
    """Every phase once the workers are connected; a lost peer raises one of distribute.PEER_ERRORS."""
    # Stopped during start-up: nothing to save yet. Workers decide together, so that none
    # goes on alone into a collective that its stopped peers never join.
    with _waiting(s, "waiting for the other workers to connect"):
        startup = s.cluster.agreement.now(distribute.Decisions(stop=s.deadlines.signal_stop()))
    if startup.stop:
        return _stopped(s, startup.stop, None)
    built = _build(s)  # (unguarded: it runs the job's own code, which sees a stop at the next agreement)
    built_at = time.monotonic()
    went_back = prepare_run_dir(s, fresh, going_back)
    cfg, job = s.cfg, s.job
    add_callbacks(built, job, cfg, s.storage, s.chief)
    store = CheckpointStore(built.groups, s.storage, s.checkpoint_dir(), cfg.max_to_keep, writes=s.chief,
                            on_device=cfg.snapshot_on_device, holds_replica_zero=s.cluster.replicas.first == 0)
    run = Training(built, store, Writers(store, HistoryWriter(s.storage) if s.chief else None,
                                         cfg.flush_timeout_seconds), went_back, built_at,
                   Events(local_dir(s.storage, EVENTS_FILE, cfg.staging_dir)) if s.chief else NO_EVENTS)
    try:
        return _run(s, run)
    finally:
        s.requests.close()
        run.writers.close()
        run.events.close()


def _waiting(s: Session, phase: str, bounded: bool = True):
    """A guard (see :mod:`trainer.steering.blocking`) for a phase that waits in a collective for
    the other workers: a stop signal ends it (not a SLURM warning that leaves time to train: the
    loop uses that time), and so, if ``bounded``, does --peer-timeout-seconds.
    Nothing to guard with one worker."""
    if s.cluster.workers == 1:
        return contextlib.nullcontext()
    awaited = "the other workers" if s.chief else "the chief (worker 0)"
    return Guard(phase, s.cfg.peer_timeout_seconds if bounded else None, awaited, stops=s.deadlines.stops_at_once)


def _build(s: Session) -> Built:
    s.timings["imports"] = _process_age_s()
    started = time.monotonic()
    built = build(s.job, s.cfg, s.cluster)
    log.info("job %s: %s, %s; %s", s.job.label, built.model.name, _lengths(built), s.cluster.describe())
    s.timings["job"] = time.monotonic() - started
    return built


def _lengths(built: Built) -> str:
    """"N steps per epoch", or what an unknown length means and the one line that states it; the
    validation data's."""
    steps = built.train.steps_per_epoch
    text = (f"{steps} steps per epoch" if steps else "epochs of unknown length (the first ends where the data "
            "does; dataset.apply(tf.data.experimental.assert_cardinality(N)) states it beforehand)")
    if built.validation is not None:
        val = built.validation.steps_per_epoch
        text += f", validation {val} steps" if val else ", validation read to its end"
    return text


def _run(s: Session, run: Training) -> Result:
    _restore(s, run)
    _apply_pending(s, run)
    state, cfg = run.state, s.cfg
    if state.epoch >= cfg.epochs or state.stopped_early:
        why = "stopped early by a callback" if state.stopped_early else f"{state.epoch}/{cfg.epochs} epochs"
        print(f"training already complete: {why} (global step {state.global_step}); nothing to do."
              + ("" if state.stopped_early else " Raise --epochs to train longer."), flush=True)
        _begin_and_end(run.built, state)
        result = _finished(s, run, None)
        run.events.write("end", **_end_record(s, run, result), already_complete=True)
        return result
    stopping = s.cluster.agreement.now(distribute.Decisions(stop=s.deadlines.signal_stop())).stop  # (while building)
    if stopping:
        return _stopped(s, stopping, run)
    try:
        _loop(s, run).run()
    except Interrupted as exc:
        return _stopped(s, exc.signum, run, exc.checkpoint, exc.sources)
    finally:
        if isinstance(run.built.train, StreamingData):
            run.built.train.log_share()
    result = _finished(s, run, run.saver.last_checkpoint)
    _summary(s, run, result)
    return result


def _summary(s: Session, run: Training, result: Result) -> None:
    """The end in words (epochs, steps, time, the last epoch's logs, where the model is, what
    next), and as the events file's ``end`` record."""
    state, cfg, record = run.state, s.cfg, _end_record(s, run, result)
    limit = f" (--max-steps {cfg.max_steps})" if state.epoch < cfg.epochs and not state.stopped_early else ""
    early = " (stopped early by a callback)" if state.stopped_early else ""
    lines = [f"training complete{limit}: {state.epoch} epochs{early}, global step {state.global_step}, "
             f"took {duration(record['seconds'])}."]
    metrics = {k: v for k, v in result.final_metrics.items() if k not in ("epoch", "lr")}
    if metrics:
        lr = result.final_metrics.get("lr")
        lines.append(f"  last epoch: {format_logs(metrics)}" + (f" - lr: {lr:g}" if lr is not None else ""))
    if result.model:
        lines.append(f"  model: {result.model} (keras.saving.load_model reads it)")
    if s.resume_command:
        program = s.resume_command.split(" train ", 1)[0]
        lines.append(f"  next: {program} status {shlex.quote(s.storage.root)} shows the run; the same command with a "
                     "higher --epochs trains it further")
    print("\n".join(lines), flush=True)
    run.events.write("end", **record)


def _end_record(s: Session, run: Training, result: Result) -> dict:
    state = run.state
    return {"epochs": state.epoch, "global_step": state.global_step,
            "seconds": round(time.monotonic() - s.started, 3), "metrics": _rounded(result.final_metrics),
            "model": result.model}


def _rounded(metrics: dict) -> dict:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in metrics.items()}


def duration(seconds: float) -> str:
    """``12.3s``, ``3m23s``, ``2h05m``."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes = int(seconds // 60)
    if minutes < 60:
        return f"{minutes}m{int(seconds % 60):02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def _restore(s: Session, run: Training) -> None:
    """The checkpoint the chief chose, on every worker (each waits here for the chief's start-up)."""
    agreement, built, replicas = s.cluster.agreement, run.built, s.cluster.replicas
    newest = None
    if s.chief:
        run.store.cleanup_stale()
        newest = run.store.newest_usable()
    with _waiting(s, "choosing the checkpoint to restore"):
        number = agreement.share(newest["number"] if newest else None)
        run.store.follow(int(agreement.share(float(run.store.last_number)) or 0))
    manifest = run.store.restore(int(number)) if number else None
    s.timings["restore"] = time.monotonic() - run.built_at
    log.info("start-up: %s", ", ".join(f"{k} {v:.2f}s" for k, v in s.timings.items() if v is not None))
    if manifest:
        run.state = state = TrainerState.from_json(built.state_var.numpy().decode())
        if state.steps_per_epoch is not None and built.train.steps_per_epoch is None:
            built.train.learn_length(state.steps_per_epoch)  # (learned when the run's first epoch ended)
        built.callback_states.resume_from(state.callbacks)
        went_back = run.went_back
        details = ({"from_global_step": went_back["from_global_step"], "archive": went_back["archive"]}
                   if went_back else {})
        add_event(state.history, "rollback" if went_back else "resume", epoch=state.epoch,
                          step_in_epoch=state.step_in_epoch, steps_per_epoch=run.steps,
                          global_step=state.global_step, time=time.time(), **details)
        log.info("resumed from %s/ckpt-%d at %s, lr %g", s.storage.url(CHECKPOINTS_DIR),
                 manifest["number"], state.position(run.steps), state.lr)
        run.events.write("resume", checkpoint=manifest["number"], epoch=state.epoch + 1, step=state.step_in_epoch,
                         steps=run.steps, global_step=state.global_step, lr=float(f"{state.lr:.7g}"),
                         **details)
        before = manifest.get("replicas", replicas.total)
        if before != replicas.total and _reads_shards(built.train):
            log.warning("ckpt-%d and the steps before it were written with %d replicas; this run has %d. Each "
                        "worker reads its share of the logical shards: every record of a shard's pass is trained "
                        "once, in another order than with %d replicas", manifest["number"], before,
                        replicas.total, before)
        elif before != replicas.total:
            log.warning("ckpt-%d and the steps before it were written with %d replicas; this run has %d. "
                        "Training continues on exactly the examples, in exactly the order, the run would have "
                        "seen (each global batch now split %d ways); the weights will differ in the last bits "
                        "from a run that kept %d, since the gradients are summed in another order",
                        manifest["number"], before, replicas.total, replicas.total, before)
    else:
        run.state = TrainerState(lr=float(built.model.optimizer.learning_rate.numpy()), seed=s.cfg.seed)
        log.info("starting a new run in %s (%d epochs)", s.storage.root, s.cfg.epochs)
        run.events.write("start", run_dir=s.storage.root, job=s.job.label, epochs=s.cfg.epochs, steps=run.steps,
                         strategy=s.cluster.describe(), workers=s.cluster.workers,
                         replicas=s.cluster.replicas.total)


def _reads_shards(train) -> bool:
    return isinstance(train, StreamingData) and train.restores_shards


def _apply_pending(s: Session, run: Training) -> None:
    """The saver and steering, then a learning-rate request made while the run was stopped."""
    cfg, built, state = s.cfg, run.built, run.state
    streaming = built.train if isinstance(built.train, StreamingData) else None
    contents = CheckpointContents(built.state_var, built.model.optimizer, built.callback_states,
                                  s.cluster.replicas.total, streaming)
    run.saver = Saver(state, run.store, contents,
                      SaveSchedule(cfg.save_every_steps, cfg.save_every_seconds, cfg.keep_every_epochs))
    run.steering = Steering(built.model.optimizer, state, run.saver, run.writers, s.storage, run.steps, s.chief)
    pending = s.requests.immediate() if s.chief else None
    with _waiting(s, "sharing the learning-rate requests"):
        value = s.cluster.agreement.share(pending.value if pending else None)
    if value is not None:
        run.steering.apply(value, [pending] if pending else [], s.requests if s.chief else None,
                           "requested while the run was stopped")
    if run.writers.history:
        run.writers.history.submit_history(state.history)


def _loop(s: Session, run: Training) -> Loop:
    """The loop, its LR request polling started on the chief."""
    cfg, built, cluster = s.cfg, run.built, s.cluster
    if s.chief:
        s.requests.start()
    return Loop(model=built.model, strategy=cluster.strategy, replicas=cluster.replicas, train=built.train,
                validation=built.validation, seed=cfg.seed, epochs=cfg.epochs, state=run.state, saver=run.saver,
                stop=s.stop, agreement=cluster.agreement,
                progress=Progress(run.state, run.steps, cfg.epochs, cfg.quiet, cfg.log_every_steps,
                                  machine=cfg.log_format == "json", events=run.events),
                steering=run.steering, requests=s.requests if s.chief else None, history=run.writers.history,
                callbacks=built.callbacks, callback_states=built.callback_states,
                validation_freq=s.job.fit_options().validation_freq, max_steps=cfg.max_steps,
                deadlines=s.deadlines, writers=run.writers)


def _begin_and_end(built: Built, state: TrainerState) -> None:
    """As fit with no epoch left to train: on_train_begin (state restored), on_train_end; e.g.
    EarlyStopping(restore_best_weights=True) puts the best weights into the exported model."""
    if built.callbacks:
        built.callback_states.train_begin(built.callbacks, mid_epoch=False)
        built.callbacks.on_train_end(_last_metrics(state))


def _finished(s: Session, run: Training, checkpoint: int | None) -> Result:
    """Done only once the final checkpoint is in the run dir (no kill deadline here, so the
    upload gets minutes); else a storage error: re-running on this machine uploads it. The
    other workers wait for the chief's outcome: none says "done" before the run is."""
    ok = run.writers.flush("final", FINAL_FLUSH_TIMEOUT_S)
    exported = ok and s.cfg.export and s.chief and export.write_model(run.built.model, s.storage)
    with _waiting(s, "waiting for the chief's final checkpoint and model", bounded=False):
        ok = s.cluster.agreement.share(1.0 if ok else None) == 1.0  # the chief's outcome is everyone's
    return Result(errors.DONE if ok else errors.STORAGE_ERROR, run.state, checkpoint, _last_metrics(run.state),
                  s.storage.url(MODEL_FILE) if exported else None)


def _stopped(s: Session, signum: int, run: Training | None, checkpoint: int | None = None,
             sources: tuple = ()) -> Result:
    """Stopped by a signal or a notice: flush what was written, say where the run stopped (and,
    for a notice, how close to its deadline) and how to resume."""
    state = run.state if run else None
    if run is not None:
        run.writers.flush("stop")
    s.deadlines.acknowledge()
    where = f"checkpoint ckpt-{checkpoint}" if checkpoint else "no new checkpoint needed"
    position = state.position(run.steps) if state else "start-up, before training"
    notice = s.deadlines.stop_summary(state.global_step, checkpoint, sources) if state and sources else None
    took = _say_stopped(signum, s.stop, position, where, s.resume_command, notice)
    if run is not None:
        at = {"epoch": state.epoch + 1, "step": state.step_in_epoch, "steps": run.steps,
              "global_step": state.global_step}
        run.events.write("stop", signal=distribute.signal_name(signum), **at, checkpoint=checkpoint,
                         seconds=round(took, 3), resume_command=s.resume_command or None, notice=notice)
    return Result(errors.interrupted(signum), state, checkpoint, _last_metrics(state) if state else {})


def _say_stopped(signum: int, stop: StopRequest, position: str, where: str, resume_command: str,
                 notice: str | None = None) -> float:
    """The stop line (for a notice: which, and how close to its deadline) and the resume command;
    the seconds from the signal to here."""
    took = time.monotonic() - stop.received_at if stop.received_at else 0.0
    if notice:
        print(f"\n[trainer] {notice}.\n[trainer] stopped at {position}; {where}.", flush=True)
    else:
        print(f"\n[trainer] {distribute.signal_name(signum)} received: stopped at {position}; {where} "
              f"({took:.2f}s from signal to exit).", flush=True)
    if resume_command:
        print(f"[trainer] resume with: {resume_command}", flush=True)
    return took


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
