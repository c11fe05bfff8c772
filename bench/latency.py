"""Signal-to-exit latency (vs. SLURM's default KillWait of 30 s) and resume latency
(process start -> first training step, split into imports, the job's data and model, restore),
for the small preset, with a local and an S3 (moto on 127.0.0.1) run directory.

    python -m bench.latency [--trials 5] [--preset small]
"""
from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import subprocess
import tempfile
import time

from bench.common import BUCKET, ENV, ROOT, markdown_table, moto, trainer_cmd, write_json

KILL_WAIT_S = 30.0


def trial(args: list[str], rng: random.Random) -> dict:
    started = time.monotonic()
    proc = subprocess.Popen(trainer_cmd("train", *args), cwd=ROOT, env=ENV,
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
    reported = float(re.search(r"\(([\d.]+)s from signal to exit\)", text).group(1))
    return {"code": proc.returncode, "signal_to_exit_s": exit_s, "signal_to_saved_s": reported,
            "first_step_s": first_step, **startup,
            "resumed": "resumed from" in text}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=5)
    p.add_argument("--preset", default="small")
    p.add_argument("--out", default="bench/results/latency.json")
    args = p.parse_args()
    rng = random.Random(0)
    server, s3 = moto()
    results = {}
    try:
        for where, run_dir, extra in (
                ("local", tempfile.mkdtemp() + "/run", []),
                ("S3 (moto)", f"s3://{BUCKET}/latency",
                 ["--storage-options", json.dumps(s3),
                  "--staging-dir", tempfile.mkdtemp()])):
            # not --quiet: the "Epoch k/n" line is printed just before the first step
            base = ["--run-dir", run_dir, "--preset", args.preset, "--epochs", "50", *extra]
            results[where] = [trial(base, rng) for _ in range(args.trials)]
    finally:
        server.terminate()
    write_json(args.out, results)
    table = []
    for where, rows in results.items():
        exits = [r["signal_to_exit_s"] for r in rows]
        resumed = [r for r in rows if r["resumed"]] or rows
        med = lambda k: f"{statistics.median(r[k] for r in resumed):.2f}"  # noqa: E731
        saved = [r["signal_to_saved_s"] for r in rows]
        table.append([where, f"{statistics.median(saved):.2f} / {max(saved):.2f}",
                      f"{statistics.median(exits):.2f} / {max(exits):.2f}", f"{max(exits) / KILL_WAIT_S:.1%}",
                      med("first_step_s"), med("imports"), med("job"), med("restore")])
    print(f"{args.preset} preset, {args.trials} SIGTERMs per run dir at random moments\n")
    print(markdown_table(["run dir", "signal->checkpoint saved, median / max (s)",
                          "signal->process gone, median / max (s)", "max vs KillWait 30 s",
                          "start->first step, resumed (s)", "imports", "job (data + model)", "restore"], table))
    print("\n(the trainer reports the first column; the rest of the second is mostly the Python/TF interpreter "
          "shutting down)")
    codes = {r["code"] for rows in results.values() for r in rows}
    print(f"\nexit codes: {sorted(codes)} (143 = stopped by SIGTERM after a checkpoint)")


if __name__ == "__main__":
    main()
