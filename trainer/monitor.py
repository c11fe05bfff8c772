"""Training monitor: ``history.json`` and ``history.png`` in the run directory.

The history itself travels inside every checkpoint, so after a resume it is
exactly the history up to the restored point (nothing duplicated) and these
two files are simply rewritten from it. They are written off the training
thread: a slow or hung object store must not stall an epoch.
"""
from __future__ import annotations

import io
import json
import logging

from .storage import StorageError
from .worker import LatestOnlyWorker

log = logging.getLogger("trainer")

HISTORY_JSON = "history.json"
HISTORY_PNG = "history.png"
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy")


def new_history() -> dict:
    return {"epochs": [], "events": []}


def add_event(history: dict, kind: str, *, epoch: int, step_in_epoch: int, steps_per_epoch: int,
              global_step: int, **details) -> None:
    """``kind`` is "resume" or "lr_change"; the position is in fractional epochs."""
    history["events"].append({"kind": kind, "position": epoch + step_in_epoch / steps_per_epoch,
                              "global_step": global_step, **details})


class HistoryWriter(LatestOnlyWorker):
    """Writes the newest submitted history; a failure is a warning (the history is
    also in every checkpoint, and the files are rewritten at the next epoch or start)."""

    def __init__(self, storage):
        self.storage = storage
        super().__init__("history-writer")

    def submit_history(self, history: dict) -> None:
        self.submit(json.dumps(history, indent=1) + "\n")  # a snapshot: training goes on changing it

    def _serve(self, text: str) -> None:
        try:
            self.storage.write_text(HISTORY_JSON, text)
            self.storage.write_bytes(HISTORY_PNG, render_png(json.loads(text)))
        except (OSError, StorageError) as exc:
            log.warning("could not write %s: %s", self.storage.url(HISTORY_JSON), exc)
        self._done()


def render_png(history: dict) -> bytes:
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = history["epochs"]
    x = [e["epoch"] for e in epochs]
    fig = Figure(figsize=(11, 4.5), dpi=90)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, keys, title in ((ax_loss, ("loss", "val_loss"), "loss"),
                            (ax_acc, ("accuracy", "val_accuracy"), "accuracy")):
        for key in keys:
            ys = [e.get(key) for e in epochs]
            if any(y is not None for y in ys):
                ax.plot(x, ys, marker="o", markersize=3, label=key)
        for event in history["events"]:
            if event["kind"] == "resume":
                ax.axvline(event["position"], color="gray", linestyle="--", linewidth=0.8)
            else:
                ax.axvline(event["position"], color="tab:red", linestyle=":", linewidth=1.2)
                ax.annotate(f"lr {event['to']:.0e}", (event["position"], 1), xycoords=("data", "axes fraction"),
                            rotation=90, va="top", ha="right", fontsize=7, color="tab:red")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if epochs:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("training history (dashed: resumed, dotted red: learning-rate change)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
