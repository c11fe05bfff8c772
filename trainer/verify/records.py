"""The data check of a run resumed on another worker count (``--resume-workers``): did it train
every record exactly as the uninterrupted run did?

Weights cannot tell then (the gradients are summed in another order), so the check looks at the
data: a subprocess (``simulate``) reads the job's pipeline through its logical shards as the
workers of each start read it (the interrupted run's starts resuming from the iterator states its
stops committed) and fingerprints every example. With the same worker count throughout, the two
runs must read the same examples at every step. With another count a shard's pass comes in
another order, so each pass of each shard must hold the uninterrupted run's records, each as
often: none lost, none doubled. The last pass of a shard, which the steps may end midway, can
only be checked for doubles.
"""
from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

from ..rundir import CONFIG_FILE
from .messages import VerifyError, count, say, tail
from .plan import Plan
from .runs import Run, child_env, stops

SHOWN_PROBLEMS = 8
FOREIGN = ("not in the uninterrupted run's pass (a pipeline that augments at random draws other examples in "
           "another order)")


def check(plan: Plan, reference: Run, stopped: Run, total: int) -> bool:
    """Read both runs' data as their workers did, compare, say PASSED or FAILED; whether it passed."""
    starts = _starts(plan, stopped, total)
    say(f"data check: reading the job's pipeline as the workers of each start read it ({_described(starts)}) "
        "and comparing every example's fingerprint")
    runs = {"uninterrupted": [_start(plan.workers, 0, total)], "interrupted": starts}
    found = _simulate(plan, reference.run_dir / CONFIG_FILE, runs)
    if "not_sharded" in found:
        raise VerifyError("--resume-workers checks a pipeline read in logical shards of files; this job's "
                          f"training data is read whole by every worker: {found['not_sharded']}")
    same = all(start["workers"] == plan.workers for start in starts)
    problems = (_checkpoint_mismatches(found["interrupted"]["ends"], stopped.states)
                + differences(found["uninterrupted"]["reads"], found["interrupted"]["reads"], same))
    return _verdict(problems, found["uninterrupted"]["reads"], starts, same, total)


def _verdict(problems: list[str], reads: list, starts: list[dict], same: bool, total: int) -> bool:
    resumed = f"{count(len(starts) - 1, 'stop')} resumed on {_counts(starts)} workers"
    if problems:
        say(f"FAILED: the interrupted run ({resumed}) did not train what the uninterrupted run trained:")
        for problem in problems[:SHOWN_PROBLEMS]:
            say(f"  {problem}")
        if len(problems) > SHOWN_PROBLEMS:
            say(f"  ... and {len(problems) - SHOWN_PROBLEMS} more")
        return False
    records = sum(len(fingerprints) for *_, fingerprints in reads)
    if same:
        say(f"PASSED: the same {records} examples at every one of {total} steps with {resumed}")
    else:
        passes = len({(shard, number) for _, shard, number, _ in reads})
        say(f"PASSED: every record of each pass of each logical shard trained exactly once after {total} steps "
            f"with {resumed} ({records} examples, {passes} passes begun; a shard's last pass, which the steps "
            "may end midway, checked for doubles only)")
    return True


def _start(workers: int, begin: int, end: int, state: str | None = None) -> dict:
    return {"workers": workers, "begin": begin, "end": end, "state": state}


def _starts(plan: Plan, run: Run, total: int) -> list[dict]:
    """The interrupted run's starts: workers, steps, the file of the iterator state each resumed from."""
    at = [0] + [stop[3] for stop in stops(run)] + [total]
    starts = []
    for index in range(len(at) - 1):
        state = None
        if index:
            state = plan.work_dir / f"state-{index}.bin"
            state.write_bytes(run.states[index - 1])
        starts.append(_start(plan.workers_after(index), at[index], at[index + 1], state and str(state)))
    return starts


def _described(starts: list[dict]) -> str:
    return ", then ".join(f"{count(s['workers'], 'worker')} for global steps {s['begin'] + 1}-{s['end']}"
                          for s in starts)


def _counts(starts: list[dict]) -> str:
    return ", ".join(str(s["workers"]) for s in starts[1:]) or str(starts[0]["workers"])


def _simulate(plan: Plan, config: Path, runs: dict) -> dict:
    spec, out = plan.work_dir / "data-check.json", plan.work_dir / "data-check-reads.json"
    spec.write_text(json.dumps({"config": str(config), "runs": runs}))
    result = subprocess.run([sys.executable, "-m", "trainer.verify.simulate", str(spec), str(out)],
                            env=child_env(), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise VerifyError(f"the data check failed to read the job's pipeline (exit {result.returncode}):\n"
                          + tail(result.stdout + result.stderr))
    return json.loads(out.read_text())


def _checkpoint_mismatches(ends: list[list], states: list[bytes]) -> list[str]:
    """Where the simulated workers' shard positions at a stop differ from what the real run committed
    there: then the check does not read what the workers read."""
    from ..data import sharded
    found = []
    for number, (simulated, state) in enumerate(zip(ends, states), 1):
        committed = [[p.passes, p.taken] for p in sharded.unpack(state)["positions"]]
        if simulated != committed:
            found.append(f"stop {number}: the workers committed the shard positions (passes begun, micro-batches "
                         f"taken) {committed}, the check's reading reached {simulated}")
    return found


def differences(reference: list, interrupted: list, same_count: bool) -> list[str]:
    """What ``interrupted`` trained otherwise than ``reference`` (reads ``[step, shard, pass,
    fingerprints]``); empty when it trained the same (``same_count``: the same examples at every
    step; else each shard's passes hold the same records, none doubled)."""
    shape = [_shape(read) for read in reference], [_shape(read) for read in interrupted]
    if shape[0] != shape[1]:
        first = next((a for a, b in zip(*shape) if a != b), None) or max(shape, key=len)[min(map(len, shape))]
        step = first[0]
        return [(f"global step {step + 1}: the shards' passes or micro-batch sizes differ (uninterrupted "
                 f"{_at(shape[0], step)}, interrupted {_at(shape[1], step)})")]
    if same_count:
        steps = sorted({a[0] for a, b in zip(reference, interrupted) if a[3] != b[3]})
        return [f"global step {step + 1}: other examples than the uninterrupted run's" for step in steps]
    return _pass_differences(_passes(reference), _passes(interrupted))


def _shape(read: list) -> tuple:
    step, shard, number, fingerprints = read
    return step, shard, number, len(fingerprints)


def _at(shape: list, step: int) -> str:
    return ", ".join(f"shard {s} pass {p}: {n}" for at, s, p, n in shape if at == step) or "none"


def _passes(reads: list) -> dict:
    """{(shard, pass): Counter of fingerprints}."""
    found: dict = {}
    for _, shard, number, fingerprints in reads:
        found.setdefault((shard, number), Counter()).update(fingerprints)
    return found


def _pass_differences(reference: dict, interrupted: dict) -> list[str]:
    last = {}
    for shard, number in reference:
        last[shard] = max(number, last.get(shard, 0))
    found = []
    for (shard, number), trained in sorted(interrupted.items()):
        expected = reference.get((shard, number), Counter())
        doubled = sum(n - max(expected[f], 1) for f, n in trained.items() if n > max(expected[f], 1))
        complete = number < last[shard]
        lost = sum((expected - trained).values()) if complete else 0
        foreign = sum((trained - expected).values()) - doubled if complete else 0
        wrong = [text for n, text in ((doubled, f"{count(doubled, 'record')} trained twice"),
                                      (lost, f"{count(lost, 'record')} of the pass not trained"),
                                      (foreign, f"{count(foreign, 'example')} {FOREIGN}")) if n]
        if wrong:
            found.append(f"logical shard {shard}, pass {number}: " + ", ".join(wrong))
    return found
