"""Preemption notices: how much of a notice window is spent training, and what watching costs.

* A 30 s and a 120 s AWS spot notice (a stub IMDSv2 on 127.0.0.1) at step 20: the steps
  trained after it (stopping at once, as before, trains none), the share of the window minus
  the save spent training, how long before the deadline the checkpoint was committed, and how
  long the process took to end after that (the interpreter's and TensorFlow's teardown).
* A SLURM job of 2 minutes warned 90 s before its end (``--signal=B:USR1@90``): the share of
  the allocation spent training, using the warning's end time and stopping at once (what
  the trainer did before: emulated with a margin wider than the warning).
* Start-up: the time to the first step with ``--notices auto`` on this machine (no cloud)
  and with ``off``, alternating.

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
                      r"(?:an epoch's turn ([\d.]+) s, )?a save ([\d.]+) s")


def first_step(proc: subprocess.Popen, target: int = 1) -> str:
    out = ""
    for line in proc.stdout:
        out += line
        if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= target:
            return out
    raise RuntimeError(f"the run ended before step {target}:\n{out[-2000:]}")


def notice_window(window: float, tmp: str) -> dict:
    """A notice ``window`` seconds ahead at step 20: the decision's numbers (the trainer's own
    line), and when the stop line (the commit) and the process's end came."""
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
    committed = None
    for line in proc.stdout:
        out += line
        if STOP.search(line):
            committed = time.time()
    proc.wait()
    exited = time.time()
    imds.close()
    stop, decision = STOP.search(out), DECISION.search(out)
    if not stop or not decision or committed is None:
        raise RuntimeError(out[-3000:])
    left, save_s = float(decision.group(1)), float(decision.group(4))
    window = deadline - noticed
    return {"window_s": round(window, 1), "steps_after_notice": int(stop.group(1)),
            "step_s": float(decision.group(2)), "save_s": save_s, "left_at_decision_s": left,
            "share_of_window_minus_save": round((window - left - save_s) / (window - save_s), 3),
            "committed_before_deadline_s": round(deadline - committed, 1),
            "process_gone_after_commit_s": round(exited - committed, 1), "exit_code": proc.returncode}


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
    """Seconds from the start to the first step, ``off`` and ``auto`` alternating (the machine's
    load drifts)."""
    out = {"off": [], "auto": []}
    for i in range(repeats):
        for choice in ("off", "auto") if i % 2 == 0 else ("auto", "off"):
            started = time.monotonic()
            proc = subprocess.Popen(trainer_cmd("train", "--run-dir", os.path.join(tmp, f"start-{choice}-{i}"),
                                                *JOB, "--log-every-steps", "1"),
                                    cwd=ROOT, env={**ENV, "TRAINER_NOTICES": choice}, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True)
            first_step(proc)
            out[choice].append(round(time.monotonic() - started, 2))
            proc.kill()
            proc.communicate()
    return {k: sorted(v) for k, v in out.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--slurm", action="store_true", help="also the SLURM allocations (needs the dev cluster)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench/results/notices.json")
    args = p.parse_args()
    tmp = tempfile.mkdtemp()
    rows = {"windows": {f"{w}s": notice_window(w, tmp) for w in (30.0, 120.0)}, "startup": startup(tmp, args.repeats)}
    if args.slurm:
        rows["slurm"] = {"warning's end time used": slurm_allocation(tmp, 5.0),
                         "stop at the warning (before)": slurm_allocation(tmp, 1000.0)}
    write_json(args.out, rows)
    print(markdown_table(["notice window", "steps after the notice (stopping at once: 0)", "step", "save",
                          "left at the stop decision", "share of window minus save spent training",
                          "committed before the deadline", "process gone after the commit"],
                         [[f"{r['window_s']:.0f} s", r["steps_after_notice"], f"{r['step_s']:.3f} s",
                           f"{r['save_s']:.2f} s", f"{r['left_at_decision_s']} s",
                           f"{100 * r['share_of_window_minus_save']:.0f}%", f"{r['committed_before_deadline_s']} s",
                           f"{r['process_gone_after_commit_s']} s"] for r in rows["windows"].values()]))
    print()
    print(markdown_table(["--notices", "start to first step (sorted)", "median"],
                         [[k, ", ".join(f"{t:.2f} s" for t in v), f"{v[len(v) // 2]:.2f} s"]
                          for k, v in rows["startup"].items()]))
    if args.slurm:
        print()
        print(markdown_table(["SLURM, 2 min warned at 90 s", "trainer exited after", "allocation used"],
                             [[k, f"{r['trainer_exited_after_s']} s", f"{100 * r['share_used']:.0f}%"]
                              for k, r in rows["slurm"].items()]))


if __name__ == "__main__":
    main()
