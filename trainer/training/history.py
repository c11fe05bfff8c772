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

from ..rundir import HISTORY_JSON, HISTORY_PNG
from ..storage import StorageError
from ..storage.worker import LatestOnlyWorker
from .history_format import RECORD_FIELDS

log = logging.getLogger("trainer")


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


def metric_names(epochs: list[dict]) -> list[str]:
    """The metrics the epochs record (``loss`` first), without their ``val_`` twins."""
    names = {k.removeprefix("val_") for e in epochs for k in e if k not in RECORD_FIELDS}
    return sorted(names, key=lambda n: (n != "loss", n))


def render_png(history: dict) -> bytes:
    """One panel per metric (training and validation), with the run's events marked."""
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = history["epochs"]
    names = metric_names(epochs)[:4] or ["loss"]
    fig = Figure(figsize=(5.5 * len(names), 4.5), dpi=90)
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for key in (name, f"val_{name}"):  # (validation_freq: val_ values only where validated)
            points = [(e["epoch"], e[key]) for e in epochs if e.get(key) is not None]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=key)
        for event in history["events"]:
            style = _EVENT_STYLE[event["kind"]]
            ax.axvline(event["position"], **style)
            label = (f"lr {event['to']:.0e}" if event["kind"] == "lr_change" else
                     f"back from step {event['from_global_step']}" if event["kind"] == "rollback" else
                     event["source"] if event["kind"] == "notice" else None)
            if label:
                ax.annotate(label, (event["position"], 1), xycoords=("data", "axes fraction"), rotation=90,
                            va="top", ha="right", fontsize=7, color=style["color"])
        ax.set_xlabel("epoch")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        if epochs:
            ax.legend(loc="best", fontsize=8)
    fig.suptitle("training history (dashed gray: resumed, dotted red: learning-rate change, "
                 "dash-dot purple: rolled back, orange: preemption notice)", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


_EVENT_STYLE = {
    "resume": dict(color="gray", linestyle="--", linewidth=0.8),
    "lr_change": dict(color="tab:red", linestyle=":", linewidth=1.2),
    "rollback": dict(color="tab:purple", linestyle="-.", linewidth=1.4),
    "notice": dict(color="tab:orange", linestyle="-", linewidth=1.0),
}
