"""The ``train`` subprocesses of verify: an uninterrupted run, and one stopped by real signals at
random reported steps and resumed each time; what their output and ``status --json`` say."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .. import errors
from .compare import iterator_state
from .messages import VerifyError, count, say, tail
from .plan import Plan

STOP_LINE = re.compile(r"stopped at epoch (\d+) step (\d+)/(\d+|unknown) \(global step (\d+)\); checkpoint ckpt-(\d+)")
STEPS_PER_EPOCH = re.compile(r", (\d+) steps per epoch")
NEW_RUN = re.compile(r"starting a new run in .* \((\d+) epochs\)")
SIGNALS = (signal.SIGTERM, signal.SIGINT)
# flags verify sets itself for every run (the user's flags come first; the last one wins)
RUN_FLAGS = ["--log-every-steps", "1", "--log-format", "json", "--quiet", "--no-tensorboard", "--no-export"]


@dataclass
class Run:
    """One run dir and the output of every start that trained in it: worker 0's in ``outputs``,
    every worker's in ``workers``; the iterator state committed at each stop in ``states``."""
    name: str
    run_dir: Path
    outputs: list[str] = field(default_factory=list)
    workers: list[list[str]] = field(default_factory=list)
    states: list[bytes] = field(default_factory=list)

    @property
    def output(self) -> str:
        return "".join(self.outputs)


def uninterrupted(plan: Plan, name: str) -> Run:
    run = Run(name, plan.work_dir / name)
    say(f"{name} run started" + _on(plan.workers))
    started = time.monotonic()
    code = _finish(run, Workers(plan, run, plan.workers), [], None)
    if code != errors.DONE:
        raise run_failed(run, code)
    where = position(run)
    say(f"{name} run done: global step {where['global_step']} ({where['epoch']} epochs and "
        f"{where['step_in_epoch']} steps) in {time.monotonic() - started:.1f}s")
    return run


def interrupted(plan: Plan) -> Run:
    """The same run, signalled at ``plan.stops`` random reported steps and resumed to the end."""
    run = Run("interrupted", plan.work_dir / "interrupted")
    say("interrupted run started" + _on(plan.workers))
    proc = Workers(plan, run, plan.workers)
    seen, total = _read_total(proc, plan.steps)
    if total < 2:
        _finish(run, proc, seen, None)
        raise VerifyError(f"the job trains {total} step in all: there is no step to stop at")
    targets = sorted(random.Random(plan.stop_seed).sample(range(1, total), min(plan.stops, total - 1)))
    say(f"interrupted run: {total} steps; signals once it reports global steps {', '.join(map(str, targets))}")
    reached = 0
    for index, target in enumerate(targets):
        sig = SIGNALS[index % len(SIGNALS)]
        if proc is None:
            proc, seen = Workers(plan, run, plan.workers_after(index)), []
        more, landed = _read_until_step(proc, max(target, reached + 1))
        code = _finish(run, proc, seen + more, sig if landed else None)
        proc = None
        if code == errors.DONE:
            say(f"  the run finished before the {signal.Signals(sig).name} landed")
            return run
        if code != errors.interrupted(sig):
            raise run_failed(run, code)
        epoch, step, steps, reached, number = _last_stop(run)
        committed = position(run)["global_step"]
        if committed != reached:
            raise VerifyError(f"the stop at global step {reached} committed a checkpoint at global step "
                              f"{committed}: steps were lost")
        if plan.resume_workers is not None:
            run.states.append(iterator_state(run.run_dir))
        say(f"  stop {index + 1}: {signal.Signals(sig).name} at epoch {epoch} step {step}/{steps} "
            f"(global step {reached}), ckpt-{number}" + _resumed_on(plan, index + 1))
    if proc is None:
        proc, seen = Workers(plan, run, plan.workers_after(len(targets))), []
    code = _finish(run, proc, seen, None)
    if code != errors.DONE:
        raise run_failed(run, code)
    say(f"  resumed to the end: global step {position(run)['global_step']}")
    return run


def _on(workers: int) -> str:
    return f" on {workers} workers" if workers > 1 else ""


def _resumed_on(plan: Plan, stops: int) -> str:
    if plan.resume_workers is None:
        return ""
    return f"; resumed on {count(plan.workers_after(stops), 'worker')}"


class Workers:
    """The ``train`` processes of one start of a run, in ``run``'s dir: worker 0 (the chief)
    with its output and errors in one pipe, read as it prints (``stdout``); the others (several
    workers find each other through TF_CONFIG on 127.0.0.1) each into a file, read at the end."""

    def __init__(self, plan: Plan, run: Run, workers: int):
        argv = [sys.executable, "-m", "trainer", "train", *plan.train_args, "--run-dir", str(run.run_dir),
                "--max-steps", str(plan.steps), *RUN_FLAGS]
        hosts = [f"127.0.0.1:{port}" for port in _free_ports(workers)] if workers > 1 else []
        self.procs, self.files = [], []
        for index in range(workers):
            env = child_env()
            if hosts:
                env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts},
                                               "task": {"type": "worker", "index": index}})
            out = subprocess.PIPE
            if index:
                out = open(plan.work_dir / f"{run.name}-{len(run.outputs) + 1}-worker-{index}.log",  # noqa: SIM115
                           "w+")  # (closed by end)
                self.files.append(out)
            self.procs.append(subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, text=True))
        self.stdout = self.procs[0].stdout

    def send_signal(self, sig: int) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(sig)

    def communicate(self) -> tuple[str, list[str]]:
        """(the rest of worker 0's output, every other worker's output) once all have ended."""
        rest, _ = self.procs[0].communicate()
        others = []
        for proc, file in zip(self.procs[1:], self.files):
            proc.wait()
            file.seek(0)
            others.append(file.read())
        return rest, others

    def end(self) -> None:
        """Kill what still runs (verify itself failed), close the files."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for file in self.files:
            file.close()

    @property
    def returncode(self) -> int:
        """Worker 0's exit code, or the first other worker's that is not 0 (all end alike, or one failed)."""
        codes = [proc.returncode for proc in self.procs]
        return next((code for code in codes if code != errors.DONE), codes[0])


_PORTS_GIVEN: set[int] = set()  # to the workers of this verify's starts: the two runs start side by side
_PORTS_LOCK = threading.Lock()


def _free_ports(n: int) -> list[int]:
    """``n`` ports free on 127.0.0.1 now, none given before by this process (a port just closed may be
    given again by the system, to the other run's workers starting at the same moment)."""
    with _PORTS_LOCK:
        ports: list[int] = []
        while len(ports) < n:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            if port not in _PORTS_GIVEN:
                _PORTS_GIVEN.add(port)
                ports.append(port)
        return ports


def _finish(run: Run, proc: Workers, seen: list[str], sig: int | None) -> int:
    """Send ``sig`` (if any) to every worker, wait for the end, add the output to the run's; the exit code."""
    try:
        if sig:
            proc.send_signal(sig)
        rest, others = proc.communicate()
    finally:
        proc.end()
    output = "".join(seen) + rest
    if not _resumed_where_stopped(run, output):
        raise VerifyError(f"a start of the {run.name} run did not resume where the previous one stopped:\n"
                          + tail(output))
    run.outputs.append(output)
    run.workers.append([output, *others])
    return proc.returncode


def _read_total(proc: Workers, steps: int) -> tuple[list[str], int]:
    """(the lines read, the steps the run will train) from its start-up lines: at most ``steps``."""
    seen, per_epoch = [], None
    for line in proc.stdout:
        seen.append(line)
        found = STEPS_PER_EPOCH.search(line)
        per_epoch = int(found.group(1)) if found else per_epoch
        epochs = NEW_RUN.search(line)
        if epochs:  # (data of unknown length: at most ``steps``)
            return seen, min(steps, per_epoch * int(epochs.group(1))) if per_epoch else steps
    return seen, steps  # it ended first: _finish reports why


def _read_until_step(proc: Workers, target: int) -> tuple[list[str], bool]:
    """(the lines read, whether it reported global step ``target``) before its output ended."""
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= target:
            return seen, True
    return seen, False


def _resumed_where_stopped(run: Run, output: str) -> bool:
    previous = stops(run)
    if not previous:
        return True
    epoch, step, steps, reached, _ = previous[-1]
    return f"at epoch {epoch} step {step}/{steps} (global step {reached})" in output


def child_env() -> dict:
    """This process's environment, with this very ``trainer`` package first on the path."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.environ.get("PYTHONPATH")
    return dict(os.environ, PYTHONPATH=root + (os.pathsep + path if path else ""), PYTHONUNBUFFERED="1")


def stops(run: Run) -> list[tuple[int, ...]]:
    """Every stop of ``run`` so far: (epoch, step, steps per epoch, global step, checkpoint number)."""
    return [_numbers(m.groups()) for m in STOP_LINE.finditer(run.output)]


def _last_stop(run: Run) -> tuple[int, ...]:
    found = STOP_LINE.findall(run.outputs[-1])
    if not found:
        raise VerifyError(f"the {run.name} run exited as if stopped, without its stop line:\n"
                          + tail(run.outputs[-1]))
    return _numbers(found[-1])


def _numbers(groups) -> tuple:
    """A stop line's numbers (steps per epoch "unknown" in a first epoch of unknown length)."""
    return tuple(int(g) if g.isdigit() else g for g in groups)


def position(run: Run) -> dict:
    """The newest committed checkpoint's position, from ``status --json``."""
    result = subprocess.run([sys.executable, "-m", "trainer", "status", str(run.run_dir), "--json"],
                            env=child_env(), capture_output=True, text=True, check=False)
    latest = json.loads(result.stdout)["latest"] if result.returncode == 0 else None
    if not latest:
        raise VerifyError(f"the {run.name} run has no committed checkpoint:\n{tail(run.output)}")
    return latest


def run_failed(run: Run, code: int) -> VerifyError:
    """Why a run ended with ``code``: a bad job or flags (exit 2 passes through) or an error."""
    output = run.outputs[-1] if run.outputs else ""
    if code == errors.BAD_INPUT:
        return VerifyError(f"`train` refused the job or its flags (exit 2):\n{tail(output)}", code)
    hint = ""
    if re.search(r"determinis", output, re.IGNORECASE) and "Error" in output:
        hint = ("\nlikely cause: TF op determinism (on by default) refuses an op, named above: one without a "
                "deterministic kernel, or a random op without a seed; replace or seed it, or pass "
                "--no-deterministic (resume is then no longer bitwise exact)")
    return VerifyError(f"the {run.name} run exited with {code}:\n{tail(output)}{hint}")
