"""``trainer verify``: prove that a job resumes exactly, before trusting it with a long run.

It trains the job twice through the ordinary ``train`` command in
subprocesses, in temporary run dirs and bounded by ``--max-steps``: once
without a stop, once stopped by real signals at random reported steps and
resumed each time. Then it compares every variable of the two final
checkpoints bitwise. Only the public means are used (the CLI, its ``STEP``
lines and stop line, ``status --json``, the committed checkpoints), so what
passes here is what a preempted run of the same job does.

When they differ, a second uninterrupted run tells the two kinds of failure
apart: if it already differs from the first, the job is not deterministic
(its data or an op); if not, resuming loses something, and the start-up
warnings of the runs name what (a callback with state, a pipeline that skips).
"""
from __future__ import annotations

import argparse
import importlib
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from . import errors

STOP_LINE = re.compile(r"stopped at epoch (\d+) step (\d+)/(\d+) \(global step (\d+)\); checkpoint ckpt-(\d+)")
STEPS_PER_EPOCH = re.compile(r", (\d+) steps per epoch")
NEW_RUN = re.compile(r"starting a new run in .* \((\d+) epochs\)")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# flags verify sets itself for every run (the user's flags come first; the last one wins)
RUN_FLAGS = ["--log-every-steps", "1", "--quiet", "--no-tensorboard", "--no-export"]
OWN_FLAGS = ("--run-dir", "--fresh", "--from", "--max-steps")
# start-up warnings of a source or callback whose resume may be inexact, and what to say about them
CAUSES = (
    ("its state restarts at each resume",
     "a callback keeps state in its attributes without the state protocol: it restarts at each resume"),
    ("cannot be checkpointed",
     "the tf.data pipeline cannot be checkpointed, so a resumed epoch falls back to skipping batches"),
    ("a resumed epoch skips the batches",
     ("the training data is a plain tf.data.Dataset: a resumed epoch skips batches in a new iteration, "
      "exact only if it yields the same batches every time")),
    ("PyDataset that overrides on_epoch_end",
     ("the training data is a PyDataset with its own on_epoch_end: a resumed epoch is exact only if "
      "__getitem__ returns the same batch for the same index")),
)
SHOWN_VARIABLES = 12
GROUPS = ("model", "optimizer", "metrics")  # the checkpoint's variables, in the order failures show them


class VerifyError(errors.TrainerError):
    """verify cannot go on; ``exit_code`` is given per failure (2 for bad flags, else 1), the
    message says why."""

    def __init__(self, message: str, code: int = errors.CRASH):
        super().__init__(message)
        self.exit_code = code


@dataclass
class Plan:
    train_args: list[str]   # the job and its settings, as ``train`` takes them
    steps: int
    stops: int
    stop_seed: int
    work_dir: Path


@dataclass
class Run:
    """One run dir and the output of every process that trained in it."""
    name: str
    run_dir: Path
    outputs: list[str] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.outputs)


def parser(prog: str = "trainer verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=prog, allow_abbrev=False, epilog="Exit code 0: bitwise equal; 1: they differ, or a run failed "
        "(the likely cause is named); 2: a bad flag, job or setting.", description="Prove that a job resumes exactly: an uninterrupted short run "
        "and the same run stopped by real signals at random steps, every variable compared bitwise. Flags "
        "it does not know (the job's settings, --preset, --epochs, --seed, ...) go to `train`.")
    p.add_argument("--job", default=None, help="the job file or module, as for `train` (default: the default job)")
    p.add_argument("--steps", type=int, default=200, help="train at most this many steps per run (default 200)")
    p.add_argument("--stops", type=int, default=3, help="signals sent to the interrupted run (default 3)")
    p.add_argument("--stop-seed", type=int, default=None,
                   help="seed of the random stop steps (default: a new one, printed, to repeat a failure)")
    p.add_argument("--work-dir", default=None,
                   help="where to make the folder of the run dirs (default: the system's temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the run dirs (default: removed at the end)")
    return p


def main(argv: list[str], prog: str = "trainer verify") -> int:
    args, rest = parser(prog).parse_known_args(argv)
    try:
        plan = _plan(args, rest)
    except VerifyError as exc:
        print(f"verify: error: {exc}", flush=True)
        return exc.exit_code
    try:
        return _verify(plan)
    except VerifyError as exc:
        _say(f"FAILED: {exc}")
        return exc.exit_code
    finally:
        if args.keep:
            _say(f"run dirs kept in {plan.work_dir}")
        else:
            shutil.rmtree(plan.work_dir, ignore_errors=True)


def _plan(args, rest: list[str]) -> Plan:
    for flag in OWN_FLAGS:
        if any(a == flag or a.startswith(flag + "=") for a in rest):
            raise VerifyError(f"{flag}: verify chooses it itself for its runs; leave it out", errors.BAD_INPUT)
    if args.steps < 2:
        raise VerifyError(f"--steps: must be >= 2, got {args.steps}", errors.BAD_INPUT)
    if args.stops < 1:
        raise VerifyError(f"--stops: must be >= 1, got {args.stops}", errors.BAD_INPUT)
    if args.stops >= args.steps:
        raise VerifyError(f"--stops: {args.stops} stops need more than {args.stops} --steps", errors.BAD_INPUT)
    job = ["--job", args.job] if args.job else []
    if args.work_dir:
        os.makedirs(args.work_dir, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="trainer-verify-", dir=args.work_dir))
    seed = args.stop_seed if args.stop_seed is not None else random.randrange(1 << 31)
    return Plan([*job, *rest], args.steps, args.stops, seed, work)


# -- the phases ------------------------------------------------------------------------------------------
def _verify(plan: Plan) -> int:
    _say(f"training {' '.join(plan.train_args) or 'the default job'} for at most {plan.steps} steps, "
         f"{_count(plan.stops, 'stop')} (--stop-seed {plan.stop_seed}); run dirs in {plan.work_dir}")
    with ThreadPoolExecutor(2) as pool:  # the two runs are independent: train them side by side
        pool.submit(importlib.import_module, "tensorflow")  # for the comparison, loaded meanwhile
        pending = pool.submit(_uninterrupted, plan, "uninterrupted")
        interrupted = _interrupted(plan)
        reference = pending.result()
    total = _position(reference)["global_step"]
    if _position(interrupted)["global_step"] != total:
        raise VerifyError(f"the interrupted run ended at global step {_position(interrupted)['global_step']}, "
                          f"the uninterrupted one at {total}")
    _say("comparing every variable of the two final checkpoints")
    diffs, count = compare(reference.run_dir, interrupted.run_dir)
    runs = [reference, interrupted]
    if not diffs:
        _say(f"PASSED: all {count} variables bitwise equal after {total} steps with "
             f"{_count(len(_stops(interrupted)), 'stop')}: this job resumes exactly")
        for note in _warnings(runs):
            _say(f"note: passed, but a start-up warning says {note}; try more --steps and --stops")
        return errors.DONE
    _say(f"{len(diffs)} of {count} variables differ; a second uninterrupted run tells nondeterminism "
         "from a resume that loses state")
    second = _uninterrupted(plan, "uninterrupted-again")
    again, _ = compare(reference.run_dir, second.run_dir)
    _report(diffs, count, again, runs + [second], plan)
    return 1


def _uninterrupted(plan: Plan, name: str) -> Run:
    run = Run(name, plan.work_dir / name)
    _say(f"{name} run started")
    started = time.monotonic()
    code = _finish(run, _start(plan, run), [], None)
    if code != errors.DONE:
        raise _run_failed(run, code)
    where = _position(run)
    _say(f"{name} run done: global step {where['global_step']} ({where['epoch']} epochs and "
         f"{where['step_in_epoch']} steps) in {time.monotonic() - started:.1f}s")
    return run


def _interrupted(plan: Plan) -> Run:
    """The same run, signalled at ``plan.stops`` random reported steps and resumed to the end."""
    run = Run("interrupted", plan.work_dir / "interrupted")
    _say("interrupted run started")
    proc = _start(plan, run)
    seen, total = _read_total(proc, plan.steps)
    if total < 2:
        _finish(run, proc, seen, None)
        raise VerifyError(f"the job trains {total} step in all: there is no step to stop at")
    targets = sorted(random.Random(plan.stop_seed).sample(range(1, total), min(plan.stops, total - 1)))
    _say(f"interrupted run: {total} steps; signals once it reports global steps {', '.join(map(str, targets))}")
    reached = 0
    for index, target in enumerate(targets):
        sig = SIGNALS[index % len(SIGNALS)]
        if proc is None:
            proc, seen = _start(plan, run), []
        more, landed = _read_until_step(proc, max(target, reached + 1))
        code = _finish(run, proc, seen + more, sig if landed else None)
        proc = None
        if code == errors.DONE:
            _say(f"  the run finished before the {signal.Signals(sig).name} landed")
            return run
        if code != errors.interrupted(sig):
            raise _run_failed(run, code)
        epoch, step, steps, reached, number = _last_stop(run)
        committed = _position(run)["global_step"]
        if committed != reached:
            raise VerifyError(f"the stop at global step {reached} committed a checkpoint at global step "
                              f"{committed}: steps were lost")
        _say(f"  stop {index + 1}: {signal.Signals(sig).name} at epoch {epoch} step {step}/{steps} "
             f"(global step {reached}), ckpt-{number}")
    if proc is None:
        proc, seen = _start(plan, run), []
    code = _finish(run, proc, seen, None)
    if code != errors.DONE:
        raise _run_failed(run, code)
    _say(f"  resumed to the end: global step {_position(run)['global_step']}")
    return run


def _start(plan: Plan, run: Run) -> subprocess.Popen:
    """One ``train`` process in ``run``'s dir, its output and errors in one pipe."""
    argv = [sys.executable, "-m", "trainer", "train", *plan.train_args, "--run-dir", str(run.run_dir),
            "--max-steps", str(plan.steps), *RUN_FLAGS]
    return subprocess.Popen(argv, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(run: Run, proc: subprocess.Popen, seen: list[str], sig: int | None) -> int:
    """Send ``sig`` (if any), wait for the end, add the output to the run's; the exit code."""
    try:
        if sig:
            proc.send_signal(sig)
        rest, _ = proc.communicate()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    output = "".join(seen) + rest
    if not _resumed_where_stopped(run, output):
        raise VerifyError(f"a start of the {run.name} run did not resume where the previous one stopped:\n"
                          + _tail(output))
    run.outputs.append(output)
    return proc.returncode


def _read_total(proc: subprocess.Popen, steps: int) -> tuple[list[str], int]:
    """(the lines read, the steps the run will train) from its start-up lines: at most ``steps``."""
    seen, per_epoch = [], None
    for line in proc.stdout:
        seen.append(line)
        found = STEPS_PER_EPOCH.search(line)
        per_epoch = int(found.group(1)) if found else per_epoch
        epochs = NEW_RUN.search(line)
        if epochs and per_epoch:
            return seen, min(steps, per_epoch * int(epochs.group(1)))
    return seen, steps  # it ended first: _finish reports why


def _read_until_step(proc: subprocess.Popen, target: int) -> tuple[list[str], bool]:
    """(the lines read, whether it reported global step ``target``) before its output ended."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= target:
            return seen, True
    return seen, False


def _resumed_where_stopped(run: Run, output: str) -> bool:
    stops = _stops(run)
    if not stops:
        return True
    epoch, step, steps, reached, _ = stops[-1]
    return f"at epoch {epoch} step {step}/{steps} (global step {reached})" in output


def _child_env() -> dict:
    """This process's environment, with this very ``trainer`` package first on the path."""
    root = str(Path(__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""), PYTHONUNBUFFERED="1")


# -- reading the runs ------------------------------------------------------------------------------------
def _stops(run: Run) -> list[tuple[int, ...]]:
    return [tuple(int(g) for g in m.groups()) for m in STOP_LINE.finditer(run.output)]


def _last_stop(run: Run) -> tuple[int, ...]:
    stops = STOP_LINE.findall(run.outputs[-1])
    if not stops:
        raise VerifyError(f"the {run.name} run exited as if stopped, without its stop line:\n"
                          + _tail(run.outputs[-1]))
    return tuple(int(g) for g in stops[-1])


def _position(run: Run) -> dict:
    """The newest committed checkpoint's position, from ``status --json``."""
    result = subprocess.run([sys.executable, "-m", "trainer", "status", str(run.run_dir), "--json"],
                            env=_child_env(), capture_output=True, text=True, check=False)
    latest = json.loads(result.stdout)["latest"] if result.returncode == 0 else None
    if not latest:
        raise VerifyError(f"the {run.name} run has no committed checkpoint:\n{_tail(run.output)}")
    return latest


def compare(a: Path, b: Path) -> tuple[list[tuple[str, float]], int]:
    """(name and max abs difference of each variable that differs, how many were compared), for the
    newest committed checkpoints of run dirs ``a`` and ``b``. A variable in only one counts as differing."""
    import numpy as np
    left, right = _variables(a), _variables(b)
    diffs = []
    for key in sorted(left.keys() | right.keys()):
        x, y = left.get(key), right.get(key)
        if x is None or y is None or x.shape != y.shape or x.dtype != y.dtype:
            diffs.append((key, float("inf")))
        elif x.tobytes() != y.tobytes():
            gap = np.abs(x.astype(np.float64) - y.astype(np.float64)) if x.dtype.kind in "fiub" else None
            diffs.append((key, float(np.nanmax(gap)) if gap is not None and gap.size else float("nan")))
    return sorted(diffs, key=_shown_first), len(left.keys() | right.keys())


def _shown_first(diff: tuple[str, float]) -> tuple:
    """Model weights first, then optimizer, then metrics; the largest difference first in each."""
    name, gap = diff
    return GROUPS.index(name.split("/", 1)[0]), 0.0 if math.isnan(gap) else -gap


def _variables(run_dir: Path) -> dict:
    """Every model, optimizer and metric variable of the newest committed checkpoint, by readable name."""
    import tensorflow as tf

    from .checkpoint.index import DIR, committed
    folder = run_dir / DIR
    reader = tf.train.load_checkpoint(str(folder / f"ckpt-{committed(os.listdir(folder))[0]}"))
    suffix = "/.ATTRIBUTES/VARIABLE_VALUE"
    return {_readable(k[:-len(suffix)]): reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.endswith(suffix) and k.split("/", 1)[0] in GROUPS}


def _readable(key: str) -> str:
    """Undo the checkpoint's escaping of a variable path ('.S' is '/', '..' is '.')."""
    return re.sub(r"\.(S|\.)", lambda m: "/" if m.group(1) == "S" else ".", key)


def _warnings(runs: list[Run]) -> list[str]:
    """What the runs' start-up warnings say about an inexact resume (each once)."""
    text = "".join(r.output for r in runs)
    return [why for needle, why in CAUSES if needle in text]


# -- the verdict -----------------------------------------------------------------------------------------
def _report(diffs, count: int, again, runs: list[Run], plan: Plan) -> None:
    _say(f"FAILED: {len(diffs)} of {count} variables differ between the uninterrupted and the interrupted "
         "run (max abs difference):")
    for name, gap in diffs[:SHOWN_VARIABLES]:
        _say(f"  {name}: {gap:.6g}")
    if len(diffs) > SHOWN_VARIABLES:
        _say(f"  ... and {len(diffs) - SHOWN_VARIABLES} more")
    for cause in _causes(again, runs, plan):
        _say(f"likely cause: {cause}")
    _say("rerun with --keep to look at the run dirs, and with "
         f"--stop-seed {plan.stop_seed} to stop at the same steps")


def _causes(again, runs: list[Run], plan: Plan) -> list[str]:
    causes = []
    if again:
        names = ", ".join(name for name, _ in again[:3])
        ops = (" TF op determinism is off (--no-deterministic): ops may add up in another order each run."
               if "--no-deterministic" in plan.train_args else "")
        causes.append(f"the job is not deterministic: two uninterrupted runs already differ ({len(again)} "
                      f"variables, e.g. {names}). build_data and the model must give the same result for "
                      f"the same seed and epoch: no unseeded numpy, Python or tf.random draws, no order "
                      f"that depends on timing.{ops}")
    causes += _warnings(runs)
    if not causes:
        causes.append("none the runs report: something outside the checkpoint changes training after a "
                      "resume (state kept in Python: a callback's or a data function's own counters, a "
                      "generator's position)")
    return causes


def _run_failed(run: Run, code: int) -> VerifyError:
    """Why a run ended with ``code``: a bad job or flags (exit 2 passes through) or an error."""
    output = run.outputs[-1] if run.outputs else ""
    if code == errors.BAD_INPUT:
        return VerifyError(f"`train` refused the job or its flags (exit 2):\n{_tail(output)}", code)
    hint = ""
    if re.search(r"determinis", output, re.IGNORECASE) and "Error" in output:
        hint = ("\nlikely cause: TF op determinism (on by default) refuses an op, named above: one without a "
                "deterministic kernel, or a random op without a seed; replace or seed it, or pass "
                "--no-deterministic (resume is then no longer bitwise exact)")
    return VerifyError(f"the {run.name} run exited with {code}:\n{_tail(output)}{hint}")


def _tail(output: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in output.rstrip().splitlines()[-lines:])


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _say(message: str) -> None:
    print(f"verify: {message}", flush=True)
