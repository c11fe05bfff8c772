"""The training history's shape: the record of each epoch and the run's events (resume, rollback,
learning-rate change). Pure data, apart from the writer in ``history``: the state of every
checkpoint holds it, and ``status`` reads it."""
from __future__ import annotations

RECORD_FIELDS = frozenset({"epoch", "global_step", "lr", "wall_time", "finished_at"})  # the rest are logs


def new_history() -> dict:
    return {"epochs": [], "events": []}


def fractional_epoch(epoch: int, step_in_epoch: int, steps_per_epoch: int | None) -> float:
    """Where the run is in epochs; in a first epoch of unknown length, its start (the fraction
    done is not known yet)."""
    return epoch + step_in_epoch / steps_per_epoch if steps_per_epoch else float(epoch)


def add_event(history: dict, kind: str, *, epoch: int, step_in_epoch: int, steps_per_epoch: int | None,
              global_step: int, **details) -> None:
    """``kind`` is "resume", "rollback" or "lr_change"; the position is in fractional epochs."""
    history["events"].append({"kind": kind, "position": fractional_epoch(epoch, step_in_epoch, steps_per_epoch),
                              "global_step": global_step, **details})
