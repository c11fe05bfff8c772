"""The phases of ``trainer verify``: plan, train both runs, compare, and the verdict."""
from __future__ import annotations

import importlib
import shutil
from concurrent.futures import ThreadPoolExecutor

from .. import errors
from . import records
from .compare import compare
from .messages import VerifyError, count, say
from .plan import Plan, make_plan, parser
from .report import report, warnings
from .runs import interrupted, position, stops, uninterrupted
from .shares import report_shares


def main(argv: list[str], prog: str = "trainer verify") -> int:
    args, rest = parser(prog).parse_known_args(argv)
    try:
        plan = make_plan(args, rest)
    except VerifyError as exc:
        print(f"verify: error: {exc}", flush=True)
        return exc.exit_code
    try:
        return _verify(plan)
    except VerifyError as exc:
        say(f"FAILED: {exc}")
        return exc.exit_code
    finally:
        if args.keep:
            say(f"run dirs kept in {plan.work_dir}")
        else:
            shutil.rmtree(plan.work_dir, ignore_errors=True)


def _verify(plan: Plan) -> int:
    say(f"training {' '.join(plan.train_args) or 'the default job'} for at most {plan.steps} steps, "
        f"{count(plan.stops, 'stop')} (--stop-seed {plan.stop_seed}){_workers(plan)}; run dirs in {plan.work_dir}")
    with ThreadPoolExecutor(2) as pool:  # the two runs are independent: train them side by side
        pool.submit(importlib.import_module, "tensorflow")  # for the comparison, loaded meanwhile
        pending = pool.submit(uninterrupted, plan, "uninterrupted")
        stopped = interrupted(plan)
        reference = pending.result()
    total = position(reference)["global_step"]
    if position(stopped)["global_step"] != total:
        raise VerifyError(f"the interrupted run ended at global step {position(stopped)['global_step']}, "
                          f"the uninterrupted one at {total}")
    for run in (reference, stopped):
        report_shares(run, total)
    if plan.resume_workers is not None and not records.check(plan, reference, stopped, total):
        return 1
    if any(plan.workers_after(n) != plan.workers for n in range(len(stopped.outputs))):
        say("the weights are not compared bitwise: on another worker count the gradients are summed in "
            "another order, so they differ in the last bits")
        return errors.DONE
    say("comparing every variable of the two final checkpoints")
    diffs, compared = compare(reference.run_dir, stopped.run_dir)
    runs = [reference, stopped]
    if not diffs:
        say(f"PASSED: all {compared} variables bitwise equal after {total} steps with "
            f"{count(len(stops(stopped)), 'stop')}: this job resumes exactly")
        for note in warnings(runs):
            say(f"note: passed, but a start-up warning says {note}; try more --steps and --stops")
        return errors.DONE
    say(f"{len(diffs)} of {compared} variables differ; a second uninterrupted run tells nondeterminism "
        "from a resume that loses state")
    second = uninterrupted(plan, "uninterrupted-again")
    again, _ = compare(reference.run_dir, second.run_dir)
    report(diffs, compared, again, runs + [second], plan)
    return 1


def _workers(plan: Plan) -> str:
    if plan.resume_workers is not None:
        return (f", {count(plan.workers, 'worker')}, resumed on {plan.resume_workers} after the first stop "
                f"(on {plan.workers} after a second, and so on)")
    return f", {count(plan.workers, 'worker')}" if plan.workers > 1 else ""
