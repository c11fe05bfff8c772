"""Quality: the tutorial's three-phase schedule (lr 1e-1 -> 1e-2 -> 1e-3) on the reference
ResNet, steered through the LR override file with a real SIGTERM in every phase.
Reports validation accuracy per phase next to the tutorial's 94.14%.

    python bench/quality.py                      # reduced budget (CPU): a few minutes
    python bench/quality.py --full               # the tutorial's 40/10/10 epochs on all data (GPU)
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
TUTORIAL_VAL_ACCURACY = 0.9414


def trainer(*args, interrupt_after: float | None = None) -> int:
    cmd = [sys.executable, "-m", "trainer", *args]
    if interrupt_after is None:
        return subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True).returncode
    proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if line.startswith("Epoch "):
            break
    time.sleep(interrupt_after)
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=600)
    return proc.returncode


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--full", action="store_true")
    p.add_argument("--run-dir", default=None)
    p.add_argument("--out", default="bench/results/quality.json")
    args = p.parse_args()
    run_dir = args.run_dir or tempfile.mkdtemp() + "/run"
    phases = [(0.1, 40), (0.01, 10), (0.001, 10)] if args.full else [(0.1, 2), (0.01, 1), (0.001, 1)]
    size = [] if args.full else ["--train-size", "3072", "--val-size", "1000"]
    base = ["train", "--run-dir", run_dir, "--preset", "reference", "--quiet", "--no-tensorboard", *size]
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
    report = {"device": device, "budget": "full" if args.full else "reduced", "phases": results,
              "resumes": sum(e["kind"] == "resume" for e in history["events"]),
              "wall_s": round(time.time() - started), "tutorial_val_accuracy": TUTORIAL_VAL_ACCURACY}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(report, fh, indent=1)
    print(f"reference ResNet, {report['budget']} budget on {device}, {report['resumes']} resumes, "
          f"{report['wall_s']} s\n")
    print("| phase | lr | epochs | val accuracy | tutorial (final) |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['phase']} | {r['lr']:g} | {r['epochs_done']} | {r['val_accuracy']:.4f} | "
              f"{TUTORIAL_VAL_ACCURACY:.4f} |")


if __name__ == "__main__":
    main()
