"""verify's own flags, checked and turned into a :class:`Plan`; the rest go to ``train``."""
from __future__ import annotations

import argparse
import os
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .. import errors
from .messages import VerifyError

OWN_FLAGS = ("--run-dir", "--fresh", "--from", "--max-steps")


@dataclass
class Plan:
    train_args: list[str]   # the job and its settings, as ``train`` takes them
    steps: int
    stops: int
    stop_seed: int
    work_dir: Path
    workers: int = 1               # local worker processes of each start (TF_CONFIG on 127.0.0.1)
    resume_workers: int | None = None  # the interrupted run's count after its 1st, 3rd, ... stop

    def workers_after(self, stops: int) -> int:
        """The worker count of the interrupted run's start after ``stops`` stops: --resume-workers
        after an odd number, --workers otherwise."""
        return self.resume_workers if self.resume_workers is not None and stops % 2 else self.workers


def parser(prog: str = "trainer verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, epilog="Exit code 0: bitwise equal (with --resume-workers on another "
        "count: every record trained as in the uninterrupted run); 1: they differ, or a run failed (the likely "
        "cause is named); 2: a bad flag, job or setting.",
        description="Prove that a job resumes exactly: an uninterrupted short run "
        "and the same run stopped by real signals at random steps, every variable compared bitwise. Flags "
        "it does not know (the job's settings, --preset, --epochs, --seed, ...) go to train.")
    p.add_argument("--job", default=None, help="the job file or module, as for train (default: the default job)")
    p.add_argument("--steps", type=int, default=200, help="train at most this many steps per run (default 200)")
    p.add_argument("--stops", type=int, default=3, help="signals sent to the interrupted run (default 3)")
    p.add_argument("--stop-seed", type=int, default=None,
                   help="seed of the random stop steps (default: a new one, printed, to repeat a failure)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="train each run on N local worker processes (TF_CONFIG on 127.0.0.1); a stop signals "
                        "every worker. Reports each worker's share of a pipeline read in logical shards (default 1)")
    p.add_argument("--resume-workers", type=int, default=None, metavar="M",
                   help="resume the interrupted run on M workers after its first stop (on --workers again after "
                        "a second, and so on), and check that it trains every record exactly as the uninterrupted "
                        "run does: the job's pipeline read as the workers read it, each example fingerprinted")
    p.add_argument("--work-dir", default=None,
                   help="where to make the folder of the run dirs (default: the system's temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the run dirs (default: removed at the end)")
    return p


def make_plan(args, rest: list[str]) -> Plan:
    """The plan of the parsed flags ``args`` (``rest`` goes to ``train``); makes the work folder."""
    for flag in OWN_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise VerifyError(f"{flag}: verify chooses it itself for its runs; leave it out", errors.BAD_INPUT)
    if args.steps < 2:
        raise VerifyError(f"--steps: must be >= 2, got {args.steps}", errors.BAD_INPUT)
    if args.stops < 1:
        raise VerifyError(f"--stops: must be >= 1, got {args.stops}", errors.BAD_INPUT)
    if args.stops >= args.steps:
        raise VerifyError(f"--stops: {args.stops} stops need more than {args.stops} --steps", errors.BAD_INPUT)
    if args.workers < 1:
        raise VerifyError(f"--workers: must be >= 1, got {args.workers}", errors.BAD_INPUT)
    if args.resume_workers is not None and args.resume_workers < 1:
        raise VerifyError(f"--resume-workers: must be >= 1, got {args.resume_workers}", errors.BAD_INPUT)
    job = ["--job", args.job] if args.job else []
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trainer-verify-", dir=args.work_dir))
    seed = args.stop_seed if args.stop_seed is not None else random.randrange(1 << 31)
    return Plan([*job, *rest], args.steps, args.stops, seed, work, args.workers, args.resume_workers)
