"""The README's main command, as a new user runs it: wall time from launch to exit and the
final validation accuracy on the full 10,000-image Fashion-MNIST test set (goal: >= 90%
in <= 5 minutes on a 2-core CPU).

    python -m bench.default_job [--runs 1]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time

from bench.common import ENV, ROOT, markdown_table, trainer_cmd, write_json


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", type=int, default=1)
    p.add_argument("--out", default="bench/results/default_job.json")
    args = p.parse_args()
    rows = []
    for _ in range(args.runs):
        run_dir = tempfile.mkdtemp() + "/fmnist"
        started = time.perf_counter()
        result = subprocess.run(trainer_cmd("train", "--run-dir", run_dir), cwd=ROOT, env=ENV,
                                capture_output=True, text=True, check=True)
        wall = time.perf_counter() - started
        epochs = [json.loads(line[6:]) for line in result.stdout.splitlines() if line.startswith("EPOCH ")]
        rows.append({"wall_s": round(wall, 1), "epochs": len(epochs), "val_accuracy": epochs[-1]["val_accuracy"],
                     "val_images": 10000, "per_epoch_val_accuracy": [e["val_accuracy"] for e in epochs]})
    write_json(args.out, rows)
    print(markdown_table(["run", "wall (s)", "epochs", "val accuracy (10,000 test images)", "per epoch"],
                         [[i + 1, r["wall_s"], r["epochs"], f"{r['val_accuracy']:.4f}",
                           " ".join(f"{a:.3f}" for a in r["per_epoch_val_accuracy"])] for i, r in enumerate(rows)]))


if __name__ == "__main__":
    main()
