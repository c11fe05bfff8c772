"""The small commands: ``lr`` (request a learning-rate change), ``status`` and ``export``.

``lr`` and ``status`` never import TensorFlow: what they show comes from the
commit markers, ``history.json`` and the request files. ``export`` rebuilds
the run's job to restore a checkpoint into it.
"""
from __future__ import annotations

import json
import sys

from . import errors, rundir
from .checkpoint.index import DIR, UnknownCheckpoint, committed_manifests, resolve
from .errors import TrainerError, report
from .rundir import CONFIG_FILE, HISTORY_JSON, MODEL_FILE
from .steering import lr_override
from .storage import Storage, StorageError, open_storage
from .training.history_format import RECORD_FIELDS


def set_lr(run_dir: str, value: str, storage_options: dict, at_epoch: int | None = None,
           create: bool = False) -> int:
    """Write a request; into a path that holds no run yet only with ``create`` (a typo'd path
    would otherwise take the request silently and the real run never see it)."""
    storage = open_storage(run_dir, storage_options)
    try:
        if create:
            rundir.for_training(storage)
        else:
            rundir.for_reading(storage, "lr", hint="pass --create to queue it for a run that has not started yet")
        info = collect_status(storage)
        if at_epoch is not None and info["latest"] and info["latest"]["epoch"] > at_epoch:
            raise lr_override.OverrideError(
                f"--at-epoch {at_epoch}: the run is already past it (it has done {info['latest']['epoch']} "
                f"epochs); use `lr {run_dir} {value}` to change the rate now")
        lr, name = lr_override.request(storage, value, at_epoch)
    except TrainerError as exc:
        return report(exc, sys.stdout)
    except OSError as exc:
        return report(StorageError(str(exc)), sys.stdout)
    if at_epoch is not None:
        when = f"applied when epoch {at_epoch} begins (after {at_epoch} epochs; shown as Epoch {at_epoch + 1})"
    elif info["exists"]:
        when = ("a run that is training applies it at a step boundary within its --lr-poll-seconds "
                "(10 s by default); a stopped run applies it when it resumes")
    else:
        when = "applied when a run starts there"
    if not info["exists"]:
        when += " (no run there yet: --create)"
    print(f"wrote {storage.url(name)}: learning rate {lr:g}; {when}")
    return errors.DONE


def collect_status(storage: Storage) -> dict:
    manifests = committed_manifests(storage)
    latest = manifests[0] if manifests else None
    try:
        history = json.loads(storage.read_text(HISTORY_JSON))
    except (FileNotFoundError, ValueError):
        history = {"epochs": [], "events": []}
    pending = []
    for name in lr_override.request_names(storage.listdir("")):
        try:
            req = lr_override.read(storage, name)
            if req:
                pending.append({"lr": req.value, "at_epoch": req.at_epoch, "file": name})
        except lr_override.OverrideError as exc:
            pending.append({"file": name, "error": str(exc)})
    try:
        config = json.loads(storage.read_text(CONFIG_FILE))
    except (FileNotFoundError, ValueError):
        config = {}
    keep = {m["number"] for m in manifests[:(config.get("trainer") or {}).get("max_to_keep", 3)]}
    return {
        "run_dir": storage.root,
        "exists": bool(manifests or config),
        "job": config.get("job"),
        "epochs_total": (config.get("trainer") or {}).get("epochs"),
        "latest": None if latest is None else {k: latest.get(k) for k in (
            "number", "epoch", "step_in_epoch", "global_step", "lr", "reason", "time")},
        "checkpoints": [{"number": m["number"], "global_step": m.get("global_step"), "epoch": m.get("epoch"),
                         "step_in_epoch": m.get("step_in_epoch"), "milestone": bool(m.get("milestone"))}
                        for m in manifests if m["number"] in keep],
        "milestones": [{"number": m["number"], "epoch": m.get("epoch"), "global_step": m.get("global_step")}
                       for m in manifests if m.get("milestone")],
        "current_lr": latest.get("lr") if latest else None,
        "pending_lr_requests": pending,
        "last_epoch": history["epochs"][-1] if history["epochs"] else None,
        "resumes": sum(e["kind"] == "resume" for e in history["events"]),
        "rollbacks": [e for e in history["events"] if e["kind"] == "rollback"],
        "lr_changes": [e for e in history["events"] if e["kind"] == "lr_change"],
        "notices": [e for e in history["events"] if e["kind"] == "notice"],
        "model_exported": storage.exists(MODEL_FILE),
    }


def _notice_line(e: dict) -> str:
    """A preemption notice's history record, in words."""
    line = f"{e['source']} at global step {e.get('global_step', '?')}, deadline {e.get('deadline') or 'none'}: "
    line += e.get("action", "")
    if "stopped_at_step" in e:
        line += (f"; stopped at global step {e['stopped_at_step']} with ckpt-{e['checkpoint']}, "
                 f"{e['seconds_left_at_stop']} s before the deadline")
    return line


def show_status(run_dir: str, storage_options: dict, as_json: bool = False) -> int:
    storage = open_storage(run_dir, storage_options)
    try:
        rundir.for_reading(storage, "status")
        info = collect_status(storage)
    except rundir.RunDirError as exc:
        return _status_error(exc, as_json, {"run_dir": storage.root, "exists": False})
    except StorageError as exc:
        return _status_error(exc, as_json, {"run_dir": storage.root})
    if as_json:
        print(json.dumps(info, indent=1))
        return errors.DONE if info["exists"] else errors.BAD_INPUT
    if not info["exists"]:
        print(f"{run_dir}: no run here (no config.json and no committed checkpoint)")
        return errors.BAD_INPUT
    latest = info["latest"]
    print(f"run:              {info['run_dir']}")
    print(f"job:              {info['job']}")
    if latest:
        done = latest["epoch"] == info["epochs_total"] and not latest["step_in_epoch"]
        shown = latest["epoch"] if done else latest["epoch"] + 1
        print(f"position:         epoch {shown}/{info['epochs_total']}, step {latest['step_in_epoch']} in epoch, "
              f"global step {latest['global_step']} ({'complete' if done else 'in progress'})")
        print(f"latest:           ckpt-{latest['number']} ({latest['reason']})")
    else:
        print("position:         no committed checkpoint yet")
    print("checkpoints kept: " + (", ".join(f"ckpt-{c['number']}@step{c['global_step']}"
                                            for c in info["checkpoints"]) or "none"))
    print("milestones:       " + (", ".join(f"epoch-{m['epoch']} (ckpt-{m['number']})"
                                            for m in info["milestones"]) or "none"))
    lr = info["current_lr"]
    print(f"learning rate:    {lr:.6g}" if isinstance(lr, float) else f"learning rate:    {lr}")
    requests = [f"{r['lr']:g} " + ("now" if r["at_epoch"] is None else f"at epoch {r['at_epoch']}")
                if "lr" in r else f"{r['file']}: INVALID ({r['error']})" for r in info["pending_lr_requests"]]
    print(f"pending lr:       {', '.join(requests) or 'none'}")
    last = info["last_epoch"]
    if last:
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in last.items()
                            if k not in RECORD_FIELDS and isinstance(v, float))
        print(f"last epoch:       {last['epoch']}: {metrics}")
    print(f"resumes:          {info['resumes']}; lr changes: {len(info['lr_changes'])}; "
          f"rollbacks: {len(info['rollbacks'])}")
    for notice in info["notices"]:
        print(f"notice:           {_notice_line(notice)}")
    print(f"model.keras:      {'written' if info['model_exported'] else 'not yet (written when training ends)'}")
    return errors.DONE


def _status_error(exc: TrainerError, as_json: bool, known: dict) -> int:
    """One line: JSON with ``--json`` (so a script polling a run that has not started yet can
    always parse it), else as every command reports an error."""
    if not as_json:
        return report(exc, sys.stdout)
    print(json.dumps({**known, "error": str(exc)}))
    return exc.exit_code


def export_model(run_dir: str, out: str, source: str | None, storage_options: dict) -> int:
    """Restore a kept checkpoint into the run's job and save it as a .keras file."""
    storage = open_storage(run_dir, storage_options)
    try:
        rundir.for_reading(storage, "export")
        manifest = resolve(storage, source) if source else (committed_manifests(storage) or [None])[0]
        if manifest is None:
            raise UnknownCheckpoint(f"{storage.url(DIR)} has no committed checkpoint to export")
        config = json.loads(storage.read_text(CONFIG_FILE))
    except FileNotFoundError:
        return report(rundir.RunDirError(f"{storage.url(CONFIG_FILE)} is missing: not a run directory"), sys.stdout)
    except TrainerError as exc:
        return report(exc, sys.stdout)
    from .export import rebuild_and_save
    return rebuild_and_save(storage, config, manifest, out)

