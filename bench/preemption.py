"""Preemption cost: interrupt k times at random moments, resume, finish. Ours vs.
keras.callbacks.BackupAndRestore: steps recomputed, and whether the final weights
equal an uninterrupted run's.

    python -m bench.preemption [--interrupts 3] [--train-size 4096] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench.common import ENV, ROOT, markdown_table, trainer_cmd, write_json

DRIVER = [sys.executable, "-m", "bench.keras_backup_driver"]  # one model.fit with Keras's BackupAndRestore


def interrupted_runs(cmd: list[str], rng: random.Random, k: int, wait_for: str) -> None:
    """Terminate ``cmd`` k times at random moments after it prints ``wait_for``, then run it to the end
    (if it finished before a signal landed, it is not started again: that would train anew)."""
    for _ in range(k):
        proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            if line.startswith(wait_for):
                break
        time.sleep(rng.uniform(2.0, 8.0))
        proc.terminate()
        proc.communicate(timeout=300)
        if proc.returncode == 0:
            return
    subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, check=True)


def _resumed_at(text: str) -> int:
    found = re.search(r"resumed from .* \(global step (\d+)\), lr", text)
    return int(found.group(1)) if found else 0


def ours(args, rng, tmp) -> dict:
    """Interrupt at random reported steps (the stop lands at the next boundary), resume, finish."""
    flags = ["--preset", args.preset, "--train-size", str(args.train_size), "--epochs", str(args.epochs),
             "--quiet", "--no-tensorboard", "--save-every-steps", str(args.save_every)]
    ref, run = os.path.join(tmp, "ours-ref"), os.path.join(tmp, "ours-run")
    done = subprocess.run(trainer_cmd("train", "--run-dir", ref, *flags), cwd=ROOT, env=ENV, check=True,
                          capture_output=True, text=True)
    total = int(re.search(r"training complete: \d+ epochs, global step (\d+),", done.stdout).group(1))
    cmd = trainer_cmd("train", "--run-dir", run, *flags)
    executed, last = 0, 0
    for target in sorted(rng.sample(range(1, total), args.interrupts)):
        target = max(target, last + 1)
        proc = subprocess.Popen([*cmd, "--log-every-steps", "1"], cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        text = ""
        for line in proc.stdout:
            text += line
            if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= target:
                proc.terminate()
                break
        text += proc.communicate(timeout=300)[0]
        stop = re.search(r"stopped at epoch \d+ step \d+/\d+ \(global step (\d+)\)", text)
        end = int(stop.group(1)) if stop else total
        executed += end - _resumed_at(text)
        last = end
    final = subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, capture_output=True, text=True)
    resumed = _resumed_at(final.stderr)
    executed += (total if "training complete" in final.stdout else resumed) - resumed
    from tests.helpers import latest_variables
    a, b = latest_variables(ref), latest_variables(run)
    diff = max(float(np.max(np.abs(a[k].astype(np.float64) - b[k].astype(np.float64)))) for k in a
               if a[k].dtype.kind == "f")
    return {"steps_needed": total, "steps_executed": executed, "steps_recomputed": executed - total,
            "bitwise_equal": all(a[k].tobytes() == b[k].tobytes() for k in a), "max_abs_weight_diff": diff}


def keras_backup(args, rng, tmp) -> dict:
    params = [args.preset, str(args.train_size), str(args.epochs), str(args.save_every)]
    ref, run = os.path.join(tmp, "keras-ref"), os.path.join(tmp, "keras-run")
    subprocess.run([*DRIVER, ref, *params], cwd=ROOT, env=ENV, check=True, capture_output=True)
    interrupted_runs([*DRIVER, run, *params], rng, args.interrupts, "Epoch start")
    needed = sum(1 for _ in open(os.path.join(ref, "steps.log")))
    executed = sum(1 for _ in open(os.path.join(run, "steps.log")))
    a, b = np.load(os.path.join(ref, "final.npz")), np.load(os.path.join(run, "final.npz"))
    diff = max(float(np.max(np.abs(a[k] - b[k]))) for k in a.files)
    return {"steps_needed": needed, "steps_executed": executed, "steps_recomputed": executed - needed,
            "bitwise_equal": all(a[k].tobytes() == b[k].tobytes() for k in a.files), "max_abs_weight_diff": diff}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--interrupts", type=int, default=3)
    p.add_argument("--preset", default="small")
    p.add_argument("--train-size", type=int, default=8192)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--out", default="bench/results/preemption.json")
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    rows = {"ours": ours(args, random.Random(1), tmp),
            f"keras BackupAndRestore(save_freq={args.save_every})": keras_backup(args, random.Random(1), tmp)}
    write_json(args.out, rows)
    print(f"{args.interrupts} SIGTERMs at random moments, {args.preset} preset, {args.train_size} images, "
          f"{args.epochs} epochs\n")
    print(markdown_table(["", "steps needed", "steps executed", "recomputed", "final weights bitwise equal",
                          "max abs weight diff"],
                         [[name, r["steps_needed"], r["steps_executed"], r["steps_recomputed"], r["bitwise_equal"],
                           f"{r['max_abs_weight_diff']:.3g}"] for name, r in rows.items()]))

if __name__ == "__main__":
    main()
