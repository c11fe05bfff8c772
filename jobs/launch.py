"""Submit the trainer with submitit; it requeues itself on time limits and preemption.

    python jobs/launch.py --partition gpu --gpus 1 --timeout-min 240 -- --run-dir runs/fmnist --preset reference
    python jobs/launch.py --partition gpu -- --job my_job.py --run-dir runs/mine --units 128
    python jobs/launch.py --cluster local --wait -- --run-dir runs/try --preset tiny

Everything after ``--`` is passed to ``python -m trainer train`` (``--job`` included). An
installed package runs it as ``python -m trainer.jobs.launch``. A bad run dir is refused
before anything is submitted (exit code 2, or 5 when it cannot be read or written).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

_CHECKOUT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if os.path.isfile(os.path.join(_CHECKOUT, "trainer", "__init__.py")):  # run as a script from a checkout
    sys.path.insert(0, _CHECKOUT)

from trainer.errors import TrainerError, report  # noqa: E402
from trainer.launcher import launch  # noqa: E402


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    train_args = argv[argv.index("--") + 1:] if "--" in argv else []
    own = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cluster", choices=["slurm", "local", "debug"], default=None,
                   help="default: slurm when sbatch is available, else local")
    p.add_argument("--folder", default="runs/submitit/%j", help="submitit logs and pickles")
    p.add_argument("--partition", default=None)
    p.add_argument("--gpus", type=int, default=0, help="GPUs per node")
    p.add_argument("--cpus", type=int, default=None, help="CPUs per task")
    p.add_argument("--timeout-min", type=int, default=60, help="time limit of each job allocation")
    p.add_argument("--signal-delay-seconds", "--signal-delay-s", dest="signal_delay_s", type=int, default=90,
                   help="warning signal this many seconds before the limit (checkpoint lead time)")
    p.add_argument("--max-num-timeout", type=int, default=20, help="requeues on time limit (preemptions: always)")
    p.add_argument("--wait", action="store_true", help="wait for the result and print it")
    args = p.parse_args(own)
    params = {"gpus_per_node": args.gpus} if args.gpus else {}
    if args.partition:
        params["slurm_partition"] = args.partition
    if args.cpus:
        params["cpus_per_task"] = args.cpus
    try:
        job = launch(train_args, folder=args.folder, cluster=args.cluster, timeout_min=args.timeout_min,
                     signal_delay_s=args.signal_delay_s, max_num_timeout=args.max_num_timeout, **params)
    except TrainerError as exc:  # a bad --run-dir: nothing was submitted
        return report(exc, sys.stderr)
    print(f"submitted job {job.job_id}; logs: {job.paths.stdout}")
    if args.wait:
        print(json.dumps(job.result()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
