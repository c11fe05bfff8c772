"""Every variable of two runs' newest committed checkpoints, compared bitwise; a run's committed
iterator state (for the data check of ``records``)."""
from __future__ import annotations

import math
import os
import re
from pathlib import Path

GROUPS = ("model", "optimizer", "metrics")  # the checkpoint's variables, in the order failures show them


def compare(a: Path, b: Path) -> tuple[list[tuple[str, float]], int]:
    """(name and max abs difference of each variable that differs, how many were compared), for the
    newest committed checkpoints of run dirs ``a`` and ``b``. A variable in only one counts as differing."""
    import numpy as np
    left, right = _variables(a), _variables(b)
    diffs = []
    for key in sorted(left.keys() | right.keys()):
        x, y = left.get(key), right.get(key)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            diffs.append((key, float("inf")))
        elif x.tobytes() != y.tobytes():
            gap = np.abs(x.astype(np.float64) - y.astype(np.float64)) if x.dtype.kind in "fiub" else None
            diffs.append((key, float(np.nanmax(gap)) if gap is not None and gap.size else float("nan")))
    return sorted(diffs, key=_shown_first), len(left.keys() | right.keys())


def _shown_first(diff: tuple[str, float]) -> tuple:
    """Model weights first, then optimizer, then metrics; the largest difference first in each."""
    name, gap = diff
    return GROUPS.index(name.split("/", 1)[0]), 0.0 if math.isnan(gap) else -gap


def _variables(run_dir: Path) -> dict:
    """Every model, optimizer and metric variable of the newest committed checkpoint, by readable name."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(_newest(run_dir)))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return {_readable(k[:-len(suffix)]): reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.endswith(suffix) and k.split("/", 1)[0] in GROUPS}


def _newest(run_dir: Path) -> Path:
    from ..checkpoint.index import DIR, committed
    folder = run_dir / DIR
    return folder / f"ckpt-{committed(os.listdir(folder))[0]}"


def _readable(key: str) -> str:
    """Undo the checkpoint's escaping of a variable path ('.S' is '/', '..' is '.')."""
    return re.sub(r"\.(S|\.)", lambda m: "/" if m.group(1) == "S" else ".", key)


def iterator_state(run_dir: Path) -> bytes:
    """The streamed pipeline's iterator state in the newest committed checkpoint (b"" if none)."""
    import tensorflow as tf
    reader = tf.train.load_checkpoint(str(_newest(run_dir)))
    key = "data/iterator/.ATTRIBUTES/VARIABLE_VALUE"
    return reader.get_tensor(key) if reader.has_tensor(key) else b""
