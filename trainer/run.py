"""``train``: set up, restore, apply a pending LR override, fit epoch by epoch.

Each epoch is one ``model.fit`` call over the epoch's remaining batches, so a
run resumed at step k of epoch e trains on exactly the batches an
uninterrupted run would have used, and validation, epoch-end checkpoints and
plot updates happen at the same places.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

import keras
import tensorflow as tf

from . import data, exitcodes, lr_override, monitor, pipeline
from .callback import Interrupted, MonitorWriter, ResumableCheckpoint
from .checkpoints import (
    CheckpointError,
    CheckpointStore,
    IncompatibleCheckpoint,
)
from .config import ConfigError, TrainConfig
from .data import DataError
from .model import build_for_training
from .progress import ProgressLogger
from .signals import StopRequest
from .state import TrainerState
from .storage import Storage, StorageError

log = logging.getLogger("trainer")

CONFIG_FILE = "config.json"
FINAL_FLUSH_TIMEOUT_S = 600.0


@dataclass
class Outcome:
    """What ``train`` did; the exit code is what the CLI returns."""
    exit_code: int
    state: TrainerState | None = None
    checkpoint: int | None = None
    final_metrics: dict = field(default_factory=dict)


def open_storage(cfg: TrainConfig) -> Storage:
    return Storage(cfg.run_dir, cfg.storage_options)


def staging_dir(cfg: TrainConfig, storage: Storage) -> str:
    """Where TF writes checkpoints before they are uploaded (remote runs only)."""
    if cfg.staging_dir:
        return cfg.staging_dir
    base = os.environ.get("TRAINER_STAGING_DIR",
                          os.path.join(os.path.expanduser("~"), ".cache", "trainer", "staging"))
    return os.path.join(base, hashlib.sha1(storage.root.encode()).hexdigest()[:16])


def train(cfg: TrainConfig, *, fresh: bool = False, resume_command: str = "",
          stop: StopRequest | None = None) -> Outcome:
    """Run or resume training; never raises for the expected failures (see exitcodes)."""
    stop = stop or StopRequest()
    with stop:
        try:
            return _train(cfg, fresh, resume_command, stop)
        except (ConfigError, lr_override.OverrideError) as exc:
            log.error("%s", exc)
            return Outcome(exitcodes.BAD_INPUT)
        except DataError as exc:
            log.error("%s", exc)
            return Outcome(exitcodes.DATA_ERROR)
        except StorageError as exc:
            log.error("%s", exc)
            return Outcome(exitcodes.STORAGE_ERROR)
        except CheckpointError as exc:
            log.error("%s", exc)
            return Outcome(exitcodes.CHECKPOINT_ERROR)


def _train(cfg: TrainConfig, fresh: bool, resume_command: str, stop: StopRequest) -> Outcome:
    storage = open_storage(cfg)
    if storage.is_remote:
        storage.probe()
    if fresh:
        _archive(storage)
    torn = storage.remove_torn_writes()
    if torn:
        log.warning("removed %d temporary file(s) of writes cut short by a kill: %s", len(torn), ", ".join(torn))
    pending = lr_override.read_pending(storage)  # a bad file stops us before anything is touched
    _check_or_write_config(storage, cfg)
    if stop.requested:  # stopped during start-up: nothing to save yet
        return _stopped(stop, None, 0, None, None, resume_command)

    timings = {"imports": _process_age_s()}
    mark = time.monotonic()
    keras.utils.set_random_seed(cfg.seed)
    if cfg.deterministic:
        tf.config.experimental.enable_op_determinism()
    dataset = data.load(cfg.data_dir)
    x_train, y_train = dataset.x_train[: cfg.train_size], dataset.y_train[: cfg.train_size]
    x_val, y_val = dataset.x_test[: cfg.val_size], dataset.y_test[: cfg.val_size]
    steps = pipeline.steps_per_epoch(len(x_train), cfg.batch_size)
    log.info("data: %d training / %d validation images from %s; %d steps per epoch",
             len(x_train), len(x_val), dataset.source, steps)
    val_ds = pipeline.eval_dataset(x_val, y_val, batch_size=cfg.batch_size, image_size=cfg.image_size)

    timings["data"], mark = time.monotonic() - mark, time.monotonic()
    built = build_for_training(cfg)
    model, state_var = built.model, built.state
    local_dir = (storage.local_path("checkpoints") if not storage.is_remote
                 else os.path.join(staging_dir(cfg, storage), "checkpoints"))
    store = CheckpointStore(built.groups, storage, local_dir, cfg.max_to_keep)
    writers = _Writers(store, monitor.HistoryWriter(storage), cfg.flush_timeout_s)
    timings["model"], mark = time.monotonic() - mark, time.monotonic()
    try:
        store.cleanup_stale()
        manifest = store.restore_latest()
        timings["restore"] = time.monotonic() - mark
        log.info("start-up: %s", ", ".join(f"{k} {v:.2f}s" for k, v in timings.items() if v is not None))
        if manifest:
            state = TrainerState.from_json(state_var.numpy().decode())
            monitor.add_event(state.history, "resume", epoch=state.epoch, step_in_epoch=state.step_in_epoch,
                              steps_per_epoch=steps, global_step=state.global_step, time=time.time())
            log.info("resumed from %s/ckpt-%d at %s, lr %g", store.storage.url("checkpoints"),
                     manifest["number"], state.position(steps), state.lr)
        else:
            state = TrainerState(lr=cfg.lr, seed=cfg.seed)
            log.info("starting a new run in %s (%s preset, %d epochs)", storage.root, cfg.preset, cfg.epochs)

        callback = ResumableCheckpoint(state, state_var, store, stop, steps,
                                       cfg.save_every_steps, cfg.save_every_seconds)
        callback.set_model(model)
        if pending:
            _apply_override(pending, state, model, callback, writers, steps)
        writers.history.submit_history(state.history)

        if state.epoch >= cfg.epochs:
            print(f"training already complete: {state.epoch}/{cfg.epochs} epochs "
                  f"(global step {state.global_step}); nothing to do. Raise --epochs to train longer.",
                  flush=True)
            return _finished(writers, state, None)
        if stop.requested:
            return _stopped(stop, state, steps, None, writers, resume_command)

        callbacks = [callback, MonitorWriter(writers.history, state),
                     ProgressLogger(state, steps, cfg.epochs, cfg.quiet)]
        if cfg.tensorboard:
            tb_dir = (storage.local_path("tensorboard") if not storage.is_remote
                      else os.path.join(staging_dir(cfg, storage), "tensorboard"))
            callbacks.append(keras.callbacks.TensorBoard(tb_dir, update_freq="epoch"))
        try:
            while state.epoch < cfg.epochs:
                epoch = state.epoch
                train_ds = pipeline.train_dataset(x_train, y_train, seed=cfg.seed, epoch=epoch,
                                                  start_step=state.step_in_epoch,
                                                  batch_size=cfg.batch_size,
                                                  image_size=cfg.image_size, augment=cfg.augment)
                model.fit(train_ds, epochs=epoch + 1, initial_epoch=epoch, validation_data=val_ds,
                          callbacks=callbacks, verbose=0, shuffle=False)
        except Interrupted as exc:
            return _stopped(stop, state, steps, exc.checkpoint, writers, resume_command)
        print(f"training complete: {state.epoch} epochs, global step {state.global_step}, "
              f"final {json.dumps(_last_metrics(state))}", flush=True)
        return _finished(writers, state, callback.last_checkpoint)
    finally:
        writers.close()


def _apply_override(pending, state: TrainerState, model, callback, writers, steps: int) -> None:
    storage = writers.store.storage
    value, digest = pending
    if digest in state.applied_overrides:
        log.info("lr_override (%g) was already applied before the last stop; marking it consumed", value)
        lr_override.mark_consumed(storage, value, digest, state.global_step)
        return
    old = float(model.optimizer.learning_rate.numpy())
    model.optimizer.learning_rate.assign(value)
    log.info("learning rate %g -> %g (from %s, at %s)", old, value, storage.url(lr_override.PENDING),
             state.position(steps))
    monitor.add_event(state.history, "lr_change", epoch=state.epoch, step_in_epoch=state.step_in_epoch,
                      steps_per_epoch=steps, global_step=state.global_step, to=value,
                      time=time.time(), **{"from": old})
    state.applied_overrides.append(digest)
    callback.save("lr override")   # the new rate is durable before the file is marked consumed
    writers.flush("lr override")
    lr_override.mark_consumed(storage, value, digest, state.global_step)


@dataclass
class _Writers:
    """The run's background writers: checkpoints (with uploads) and the history files."""
    store: CheckpointStore
    history: monitor.HistoryWriter
    timeout_s: float

    def flush(self, why: str, timeout_s: float | None = None) -> bool:
        """Wait (at most ``timeout_s``, default the stop budget) until both have written everything."""
        timeout_s = timeout_s or self.timeout_s
        started = time.monotonic()
        ok = self.store.flush(timeout_s)
        self.history.wait_idle(max(0.0, timeout_s - (time.monotonic() - started)))
        if self.store.storage.is_remote:
            if ok:
                log.info("upload flushed (%s) in %.2fs", why, time.monotonic() - started)
            else:
                log.error("upload did not finish within %gs (%s); the newest checkpoint is kept "
                          "locally in %s and the next start on this machine uploads it",
                          timeout_s, why, self.store.local_dir)
        return ok

    def close(self) -> None:
        self.store.close()
        self.history.stop()


def _finished(writers: _Writers, state: TrainerState, checkpoint: int | None) -> Outcome:
    """Done only once the final checkpoint is in the run dir (no kill deadline here, so the
    upload gets minutes); else a storage error: re-running on this machine uploads it."""
    code = exitcodes.DONE if writers.flush("final", FINAL_FLUSH_TIMEOUT_S) else exitcodes.STORAGE_ERROR
    return Outcome(code, state, checkpoint, _last_metrics(state))


def _stopped(stop, state, steps, checkpoint, writers, resume_command) -> Outcome:
    import signal as _signal
    if writers is not None:
        writers.flush("stop")
    name = _signal.Signals(stop.signum).name
    took = time.monotonic() - stop.received_at if stop.received_at else 0.0
    where = f"checkpoint ckpt-{checkpoint}" if checkpoint else "no new checkpoint needed"
    position = state.position(steps) if state else "start-up, before training"
    print(f"\n[trainer] {name} received: stopped at {position}; {where} "
          f"({took:.2f}s from signal to exit).", flush=True)
    if resume_command:
        print(f"[trainer] resume with: {resume_command}", flush=True)
    return Outcome(exitcodes.interrupted(stop.signum), state, checkpoint, _last_metrics(state) if state else {})


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
    return {k: v for k, v in epochs[-1].items() if k in monitor.METRICS or k in ("epoch", "lr")}


def _check_or_write_config(storage: Storage, cfg: TrainConfig) -> None:
    """Refuse to resume a run with settings that change the model or the data order."""
    try:
        saved = json.loads(storage.read_text(CONFIG_FILE))
    except FileNotFoundError:
        storage.write_text(CONFIG_FILE, cfg.to_json() + "\n")
        return
    except ValueError as exc:
        raise ConfigError("run_dir", f"{storage.url(CONFIG_FILE)} is not valid JSON ({exc})",
                          "restore it, or start over with --fresh") from None
    mine = cfg.identity()
    diffs = [f"{k}: run has {saved.get(k)!r}, given {v!r}" for k, v in mine.items() if saved.get(k) != v]
    if diffs:
        raise IncompatibleCheckpoint(
            f"{storage.url(CONFIG_FILE)} was written with other settings ({'; '.join(diffs)}); "
            "resuming would restore a different model or data order. Use the run's own "
            "settings (see that file), another --run-dir, or --fresh to archive it and start over")
    if saved.get("epochs") != cfg.epochs:
        log.info("epochs changed from %s to %s for this run", saved.get("epochs"), cfg.epochs)
    storage.write_text(CONFIG_FILE, cfg.to_json() + "\n")


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
