"""Signal-to-exit latency (vs. SLURM's default KillWait of 30 s) and resume latency
(process start -> first training step, split into imports, data set-up, model, restore),
for the small preset, with a local and an S3 (moto on 127.0.0.1) run directory.

    python bench/latency.py [--trials 5] [--preset small]
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.stall import moto  # noqa: E402

KILL_WAIT_S = 30.0


def trial(args: list[str], rng: random.Random) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    started = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-m", "trainer", "train", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, first_step = [], None
    for line in proc.stdout:
        out.append(line)
        if line.startswith("Epoch ") and first_step is None:
            first_step = time.monotonic() - started
            break
    time.sleep(rng.uniform(1.0, 4.0))
    sent = time.monotonic()
    proc.terminate()
    rest = proc.communicate(timeout=300)[0]
    exit_s = time.monotonic() - sent
    text = "".join(out) + rest
    startup = dict((k, float(v)) for k, v in re.findall(r"(\w+) ([\d.]+)s", text.split("start-up: ")[1].split("\n")[0]))
    return {"code": proc.returncode, "signal_to_exit_s": exit_s, "first_step_s": first_step, **startup,
            "resumed": "resumed from" in text}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--preset", default="small")
    p.add_argument("--out", default="bench/results/latency.json")
    args = p.parse_args()
    rng = random.Random(0)
    proc, endpoint = moto()
    results = {}
    try:
        for where, run_dir, extra in (
                ("local", tempfile.mkdtemp() + "/run", []),
                ("s3 (moto)", "s3://bench-bucket/latency",
                 ["--storage-options", json.dumps({"endpoint_url": endpoint, "key": "x", "secret": "x"}),
                  "--staging-dir", tempfile.mkdtemp()])):
            base = ["--run-dir", run_dir, "--preset", args.preset, "--quiet", "--epochs", "50", *extra]
            results[where] = [trial(base, rng) for _ in range(args.trials)]
    finally:
        proc.terminate()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(results, fh, indent=1)
    print("| run dir | signal->exit median (s) | max (s) | vs KillWait 30 s | start->first step, resumed (s) "
          "| imports | data | model | restore |")
    print("|---|---|---|---|---|---|---|---|---|")
    for where, rows in results.items():
        exits = [r["signal_to_exit_s"] for r in rows]
        resumed = [r for r in rows if r["resumed"]] or rows
        med = lambda k: statistics.median(r[k] for r in resumed)  # noqa: E731
        print(f"| {where} | {statistics.median(exits):.2f} | {max(exits):.2f} | {max(exits) / KILL_WAIT_S:.1%} "
              f"| {med('first_step_s'):.2f} | {med('imports'):.2f} | {med('data'):.2f} | {med('model'):.2f} "
              f"| {med('restore'):.2f} |")
    codes = {r["code"] for rows in results.values() for r in rows}
    print(f"\nexit codes: {sorted(codes)} (143 = stopped by SIGTERM after a checkpoint)")


if __name__ == "__main__":
    main()
