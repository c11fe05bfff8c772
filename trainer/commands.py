"""The small commands: ``lr`` (request a learning-rate change) and ``status``.

Neither imports TensorFlow: everything they show comes from the commit
markers, ``history.json`` and the override files.
"""
from __future__ import annotations

import json

from . import exitcodes, lr_override
from .checkpoints_index import committed_manifests
from .monitor import HISTORY_JSON
from .storage import Storage, StorageError


def set_lr(run_dir: str, value: str, storage_options: dict) -> int:
    storage = Storage(run_dir, storage_options)
    try:
        lr = lr_override.request(storage, value)
    except lr_override.OverrideError as exc:
        print(f"error: {exc}")
        return exitcodes.BAD_INPUT
    except StorageError as exc:
        print(f"error: {exc}")
        return exitcodes.STORAGE_ERROR
    print(f"wrote {storage.url(lr_override.PENDING)}: learning rate {lr:g} will be applied when the run "
          "next starts or resumes (stop a running job with ctrl+c / SIGTERM and re-run the same "
          "train command; a SLURM job picks it up at its next requeue)")
    return exitcodes.DONE


def collect_status(storage: Storage) -> dict:
    manifests = committed_manifests(storage)
    latest = manifests[0] if manifests else None
    try:
        history = json.loads(storage.read_text(HISTORY_JSON))
    except (FileNotFoundError, ValueError):
        history = {"epochs": [], "events": []}
    try:
        pending = lr_override.parse(storage.read_text(lr_override.PENDING))
    except FileNotFoundError:
        pending = None
    except lr_override.OverrideError as exc:
        pending = f"INVALID: {exc}"
    try:
        config = json.loads(storage.read_text("config.json"))
    except (FileNotFoundError, ValueError):
        config = {}
    return {
        "run_dir": storage.root,
        "exists": bool(manifests or config),
        "epochs_total": config.get("epochs"),
        "latest": None if latest is None else {k: latest.get(k) for k in (
            "number", "epoch", "step_in_epoch", "global_step", "lr", "reason", "time")},
        "checkpoints": [{"number": m["number"], "global_step": m.get("global_step")} for m in manifests],
        "current_lr": latest.get("lr") if latest else config.get("lr"),
        "pending_lr_override": pending,
        "last_epoch": history["epochs"][-1] if history["epochs"] else None,
        "resumes": sum(e["kind"] == "resume" for e in history["events"]),
        "lr_changes": [e for e in history["events"] if e["kind"] == "lr_change"],
    }


def show_status(run_dir: str, storage_options: dict, as_json: bool = False) -> int:
    try:
        info = collect_status(Storage(run_dir, storage_options))
    except StorageError as exc:
        print(f"error: {exc}")
        return exitcodes.STORAGE_ERROR
    if as_json:
        print(json.dumps(info, indent=1))
        return exitcodes.DONE if info["exists"] else exitcodes.BAD_INPUT
    if not info["exists"]:
        print(f"{run_dir}: no run here (no config.json and no committed checkpoint)")
        return exitcodes.BAD_INPUT
    latest = info["latest"]
    print(f"run:              {info['run_dir']}")
    if latest:
        done = "complete" if latest["epoch"] == info["epochs_total"] else "in progress"
        print(f"position:         epoch {latest['epoch'] + 1 if done != 'complete' else latest['epoch']}"
              f"/{info['epochs_total']}, step {latest['step_in_epoch']} in epoch, "
              f"global step {latest['global_step']} ({done})")
        print(f"latest:           ckpt-{latest['number']} ({latest['reason']})")
    else:
        print("position:         no committed checkpoint yet")
    print("checkpoints kept: " + (", ".join(f"ckpt-{c['number']}@step{c['global_step']}"
                                            for c in info["checkpoints"]) or "none"))
    lr = info["current_lr"]
    print(f"learning rate:    {lr:.6g}" if isinstance(lr, float) else f"learning rate:    {lr}")
    print(f"pending override: {info['pending_lr_override'] if info['pending_lr_override'] is not None else 'none'}")
    last = info["last_epoch"]
    if last:
        metrics = ", ".join(f"{k} {last[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy")
                            if k in last)
        print(f"last epoch:       {last['epoch']}: {metrics}")
    print(f"resumes:          {info['resumes']}; lr changes: {len(info['lr_changes'])}")
    return exitcodes.DONE
