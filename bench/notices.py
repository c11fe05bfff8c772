"""Preemption notices: how much of a notice window is spent training, and what watching costs.

* A 30 s and a 120 s AWS spot notice (a stub IMDSv2 on 127.0.0.1) at step 20: the time from
  the notice to the stop, the steps trained after it (stopping at once, as before, trains
  none), the share of the window minus the save spent training, the time left at exit.
* A SLURM job of 2 minutes warned 90 s before its end (``--signal=B:USR1@90``): the share of
  the allocation spent training, using the warning's end time and stopping at once (what
  the trainer did before: emulated with a margin wider than the warning).
* Start-up: the time to the first step with ``--notices auto`` on this machine (no cloud)
  and with ``off``.

    python -m bench.notices [--slurm] [--repeats 3]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import tempfile
import time

from bench.common import ENV, ROOT, markdown_table, trainer_cmd, write_json

JOB = ["--preset", "small", "--train-size", "8192", "--epochs", "50", "--no-tensorboard", "--quiet"]
STOP = re.compile(r"trained (\d+) more steps?; checkpoint ckpt-\d+, (\d+) s before the deadline")
DECISION = re.compile(r"stopping before the deadline: ([\d.]+) s left; \d+ step\(s\) take ([\d.]+) s, "
                      r"(?:the epoch's end ([\d.]+) s, )?a save ([\d.]+) s")


def first_step(proc: subprocess.Popen, target: int = 1) -> str:
    out = ""
    for line in proc.stdout:
        out += line
        if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= target:
            return out
    raise RuntimeError(f"the run ended before step {target}:\n{out[-2000:]}")


def notice_window(window: float, tmp: str) -> dict:
    from tests.metadata_stubs import AwsImds
    imds = AwsImds()
    env = {**ENV, "TRAINER_NOTICES": "aws", "AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{imds.address}"}
    proc = subprocess.Popen(trainer_cmd("train", "--run-dir", os.path.join(tmp, f"aws-{window:g}"), *JOB,
                                        "--log-every-steps", "1"),
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = first_step(proc, 20)
    noticed = time.time()
    deadline = float(int(noticed) + window)
    imds.announce_interruption(deadline)
    out += proc.communicate(timeout=window + 300)[0]
    exited = time.time()
    imds.close()
    stop, decision = STOP.search(out), DECISION.search(out)
    if not stop or not decision:
        raise RuntimeError(out[-3000:])
    step_s, save_s = float(decision.group(2)), float(decision.group(4))
    steps = int(stop.group(1))
    usable = deadline - noticed - save_s
    return {"window_s": round(deadline - noticed, 1), "steps_after_notice": steps, "step_s": step_s,
            "save_s": save_s, "training_s": round(steps * step_s, 1),
            "share_of_window_minus_save": round(steps * step_s / usable, 3),
            "left_at_exit_s": round(deadline - exited, 1), "exit_code": proc.returncode}


def slurm_allocation(tmp: str, margin: float) -> dict:
    """One allocation of 2 minutes warned at 90 s: the share of it spent before the trainer exited."""
    run_dir = os.path.join(tmp, f"slurm-{margin:g}")
    job = subprocess.run(["sbatch", "--parsable", "--time=2", "--signal=B:USR1@90", "--job-name=bench-notice",
                          "--no-requeue", str(os.path.join(ROOT, "slurm/train.sh")), "--run-dir", run_dir, *JOB,
                          "--notice-margin-seconds", str(margin)],
                         cwd=tmp, capture_output=True, text=True, check=True, env={**ENV, "TRAINER_NOTICES": "off"},
                         ).stdout.strip().split(";")[0]
    log = os.path.join(tmp, f"slurm-bench-notice-{job}.out")
    while subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip():
        time.sleep(2)
    text = open(log).read()
    times = subprocess.run(["sacct", "-n", "-X", "-P", "-j", job, "-o", "Start,End"], capture_output=True,
                           text=True).stdout.split()[0].split("|")
    start, end = (time.mktime(time.strptime(t, "%Y-%m-%dT%H:%M:%S")) for t in times)
    exited = re.search(r"\[train\.sh (\S+)\] trainer exited", text)
    gone = time.mktime(time.strptime(exited.group(1), "%Y-%m-%dT%H:%M:%S")) if exited else end
    return {"allocation_s": 120, "trainer_exited_after_s": round(gone - start),
            "share_used": round((gone - start) / 120, 3)}


def startup(tmp: str, repeats: int) -> dict:
    out = {}
    for choice in ("off", "auto"):
        times = []
        for i in range(repeats):
            started = time.monotonic()
            proc = subprocess.Popen(trainer_cmd("train", "--run-dir", os.path.join(tmp, f"start-{choice}-{i}"),
                                                *JOB, "--log-every-steps", "1"),
                                    cwd=ROOT, env={**ENV, "TRAINER_NOTICES": choice}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            first_step(proc)
            times.append(time.monotonic() - started)
            proc.kill()
            proc.communicate()
        out[choice] = sorted(times)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slurm", action="store_true", help="also the SLURM allocations (needs the dev cluster)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--out", default="bench/results/notices.json")
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    rows = {"windows": {f"{w}s": notice_window(w, tmp) for w in (30.0, 120.0)}, "startup": startup(tmp, args.repeats)}
    if args.slurm:
        rows["slurm"] = {"warning's end time used": slurm_allocation(tmp, 5.0),
                         "stop at the warning (before)": slurm_allocation(tmp, 1000.0)}
    write_json(args.out, rows)
    print(markdown_table(["notice window", "steps after notice (stopping at once: 0)", "step", "save",
                          "training after notice", "share of window minus save", "left at exit"],
                         [[k, r["steps_after_notice"], f"{r['step_s']:.3f} s", f"{r['save_s']:.2f} s",
                           f"{r['training_s']} s", f"{100 * r['share_of_window_minus_save']:.0f}%",
                           f"{r['left_at_exit_s']} s"] for k, r in rows["windows"].items()]))
    print()
    print(markdown_table(["--notices", "time to first step (sorted)"],
                         [[k, ", ".join(f"{t:.2f} s" for t in v)] for k, v in rows["startup"].items()]))
    if args.slurm:
        print()
        print(markdown_table(["SLURM, 2 min warned at 90 s", "trainer exited after", "allocation used"],
                             [[k, f"{r['trainer_exited_after_s']} s", f"{100 * r['share_used']:.0f}%"]
                              for k, r in rows["slurm"].items()]))


if __name__ == "__main__":
    main()
