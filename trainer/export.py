"""Exporting the trained model as a ``.keras`` file that stock Keras loads.

At the end of training ``<run-dir>/model.keras`` is written (through the run
dir's storage: atomically for a local folder, as one object for a bucket);
``python -m trainer export RUN OUT.keras [--from ckpt-N | epoch-E]`` exports
any kept checkpoint. ``keras.models.load_model(OUT)`` needs no trainer import
for models built from stock Keras layers.
"""
from __future__ import annotations

import logging
import os
import tempfile

from . import errors
from .building import build
from .checkpoint.store import CheckpointError, CheckpointStore
from .cluster import distribute
from .config import TrainConfig, current_names
from .errors import TrainerError, report
from .job import load
from .rundir import CHECKPOINTS_DIR, MODEL_FILE, local_dir
from .storage import Storage, open_storage

log = logging.getLogger("trainer")


def save_local(model, path: str) -> None:
    """Save ``model`` to the local ``path`` via a temporary file and a rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=directory, prefix=".export-")
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_model(model, storage, rel: str = MODEL_FILE) -> bool:
    """``model`` as ``<run-dir>/<rel>``; a failure is a warning (the checkpoints hold everything)
    and returns False."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, MODEL_FILE)
        try:
            save_local(model, local)
            storage.upload(local, rel)
        except Exception as exc:  # noqa: BLE001 - Keras and the stores raise many types
            log.warning("could not export the model to %s: %s (the checkpoints are intact; "
                        "`python -m trainer export` retries)", storage.url(rel),
                        f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}")
            return False
    log.info("model exported to %s", storage.url(rel))
    return True


def rebuild_and_save(storage: Storage, config: dict, manifest: dict, out: str) -> int:
    """``python -m trainer export``: the run's job and settings (from config.json), checkpoint
    ``manifest`` restored into them, saved to ``out`` (a local path or an fsspec URL)."""
    try:
        _rebuild_and_save(storage, config, manifest, out)
    except (TrainerError, ValueError) as exc:  # (a plain ValueError: a job's own check of its settings)
        return report(exc)
    print(f"wrote {out}: the model of ckpt-{manifest['number']} (epoch {manifest.get('epoch')}, "
          f"step {manifest.get('step_in_epoch')} in epoch, global step {manifest.get('global_step')}); "
          "load it with keras.models.load_model")
    return errors.DONE


def _rebuild_and_save(storage: Storage, config: dict, manifest: dict, out: str) -> None:
    job = load(config["job"])
    job.choose(None, config.get("job_settings") or {})
    trainer_cfg = {k: v for k, v in (config.get("trainer") or {}).items() if k != "run_dir"}
    cfg = TrainConfig(storage.root, storage_options=storage.options, **current_names(trainer_cfg))
    built = build(job, cfg, distribute.setup("default"))
    store = CheckpointStore(built.groups, storage, local_dir(storage, CHECKPOINTS_DIR, cfg.staging_dir),
                            cfg.max_to_keep)
    try:
        store.restore(manifest["number"])
    except CheckpointError as exc:
        raise CheckpointError(f"ckpt-{manifest['number']} cannot be exported: {exc}") from exc
    finally:
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        local = out if "://" not in out else os.path.join(tmp, MODEL_FILE)
        save_local(built.model, local)
        if "://" in out:
            parent, name = out.rstrip("/").rsplit("/", 1)
            open_storage(parent, storage.options).upload(local, name)
