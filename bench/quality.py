"""Quality: the tutorial's three-phase schedule (lr 1e-1 -> 1e-2 -> 1e-3) on the reference
ResNet, steered through the LR override file with a real SIGTERM in every phase.
Reports validation accuracy per phase next to the tutorial's 94.14%.

    python -m bench.quality                      # reduced budget (CPU): a few minutes
    python -m bench.quality --old-recipe         # the same with the recipe before 0.2 (momentum 0.9)
    python -m bench.quality --full               # the tutorial's 40/10/10 epochs on all data (GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import tempfile
import time

from bench.common import ENV, ROOT, markdown_table, trainer_cmd, write_json

TUTORIAL_VAL_ACCURACY = 0.9414


def trainer(*args, interrupt_after: float | None = None) -> int:
    cmd = trainer_cmd(*args)
    if interrupt_after is None:
        return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True).returncode
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "start-up:" in line:  # restored; training starts now
            break
    time.sleep(interrupt_after)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=600)
    return proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--old-recipe", action="store_true",
                   help="SGD momentum 0.9 and the last partial batch kept (the reference preset before 0.2)")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--out", default="bench/results/quality.json")
    args = p.parse_args()
    run_dir = args.run_dir or tempfile.mkdtemp() + "/run"
    phases = [(0.1, 40), (0.01, 10), (0.001, 10)] if args.full else [(0.1, 2), (0.01, 1), (0.001, 1)]
    size = [] if args.full else ["--train-size", "3072", "--val-size", "1000"]
    recipe = ["--momentum", "0.9", "--no-drop-remainder"] if args.old_recipe else []
    base = ["train", "--run-dir", run_dir, "--preset", "reference", "--quiet", "--no-tensorboard", *size, *recipe]
    started, total, results = time.time(), 0, []
    for i, (lr, epochs) in enumerate(phases):
        total += epochs
        if i:
            trainer("lr", run_dir, str(lr))
        code = trainer(*base, "--epochs", str(total), interrupt_after=20)
        if code != 0:
            code = trainer(*base, "--epochs", str(total))
        assert code == 0, f"phase {i + 1} ended with exit code {code}"
        history = json.load(open(os.path.join(run_dir, "history.json")))
        last = history["epochs"][-1]
        results.append({"phase": i + 1, "lr": lr, "epochs_done": total, "val_accuracy": last["val_accuracy"],
                        "lr_in_history": last["lr"]})
    import tensorflow as tf
    device = "GPU" if tf.config.list_physical_devices("GPU") else "CPU"
    report = {"device": device, "budget": "full" if args.full else "reduced",
              "recipe": "old (momentum 0.9)" if args.old_recipe else "tutorial (plain SGD)", "phases": results,
              "resumes": sum(e["kind"] == "resume" for e in history["events"]),
              "wall_s": round(time.time() - started), "tutorial_val_accuracy": TUTORIAL_VAL_ACCURACY}
    write_json(args.out, report)
    print(f"reference ResNet, {report['recipe']} recipe, {report['budget']} budget on {device}, "
          f"{report['resumes']} resumes, "
          f"{report['wall_s']} s\n")
    print(markdown_table(["phase", "lr", "epochs", "val accuracy", "tutorial (final)"],
                         [[r["phase"], f"{r['lr']:g}", r["epochs_done"], f"{r['val_accuracy']:.4f}",
                           f"{TUTORIAL_VAL_ACCURACY:.4f}"] for r in results]))

if __name__ == "__main__":
    main()
