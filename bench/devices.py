"""The multi-device path on one machine: what a save blocks the loop for with the snapshot in
host memory (default) vs beside the variables (``--snapshot-on-device``), for the reference
model and one about ten times larger; and training throughput with the CPU split into 2
logical devices (MirroredStrategy, 2 replicas) vs 1.

On a CPU-only machine host and device memory are the same, so the first table shows the
code's own overhead, not a PCIe copy. On 2 cores two replicas cannot be faster than one: the
second table shows what the multi-replica path costs.

    python -m bench.devices [--saves 5] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from bench.common import ENV, ROOT, build_job, markdown_table, trainer_cmd, write_json  # noqa: E402
from trainer.checkpoint.store import CheckpointStore  # noqa: E402
from trainer.storage import open_storage  # noqa: E402

MODELS = {"reference": {}, "reference x10": {"filters": (200, 200, 400, 810)}}


def stall(name: str, settings: dict, saves: int) -> list[dict]:
    groups = build_job(None, "reference", **settings).groups
    size = sum(v.numpy().nbytes for g in groups.values() for v in g.values() if v.dtype != tf.string)
    rows = []
    for on_device in (False, True):
        folder = tempfile.mkdtemp()
        store = CheckpointStore(groups, open_storage(folder), os.path.join(folder, "checkpoints"), 3, on_device=on_device)
        try:
            for i in range(saves + 1):
                store.save({"global_step": i})
                store.flush(300)
        finally:
            store.close()
        rows.append({"model": name, "state_mb": round(size / 2**20, 1),
                     "snapshot": "beside the variables" if on_device else "host memory",
                     "blocked_ms": round(statistics.median(store.stats.blocked_s[1:]) * 1000, 1)})
    return rows


def epoch_seconds(devices: int, run_dir: str) -> float:
    cmd = trainer_cmd("train", "--run-dir", run_dir, "--preset", "small", "--train-size", "6400", "--epochs", "1",
                      "--quiet", "--no-tensorboard", "--no-export", "--save-every-seconds", "1000000")
    if devices > 1:
        cmd += ["--cpu-devices", str(devices)]
    subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, capture_output=True)
    with open(os.path.join(run_dir, "history.json")) as fh:
        return json.load(fh)["epochs"][0]["wall_time"]


def throughput(rounds: int) -> list[dict]:
    times = {1: [], 2: []}
    for _ in range(rounds):  # interleaved, so that drift in the machine's speed hits both alike
        for devices in times:
            times[devices].append(epoch_seconds(devices, tempfile.mkdtemp() + "/run"))
    one = statistics.median(times[1])
    return [{"replicas": d, "epoch_s": round(statistics.median(t), 2),
             "examples_per_s": round(6400 / statistics.median(t)), "vs_one": round(one / statistics.median(t), 3)}
            for d, t in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=5)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/devices.json")
    args = p.parse_args()
    saves = [row for name, settings in MODELS.items() for row in stall(name, settings, args.saves)]
    speed = throughput(args.rounds)
    write_json(args.out, {"stall": saves, "throughput": speed})
    print(f"loop blocked per save, median of {args.saves}\n")
    print(markdown_table(["model", "model + optimizer state (MB)", "snapshot", "loop blocked (ms)"],
                         [[r["model"], r["state_mb"], r["snapshot"], r["blocked_ms"]] for r in saves]))
    print(f"\nsmall preset, one epoch of 6400 images, median of {args.rounds} interleaved rounds\n")
    print(markdown_table(["replicas", "epoch (s)", "images/s", "vs 1 replica"],
                         [[r["replicas"], r["epoch_s"], r["examples_per_s"], f"{r['vs_one']:.3f}x"] for r in speed]))


if __name__ == "__main__":
    main()
