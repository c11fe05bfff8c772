"""Each worker's share of a pipeline read in logical shards, from what every worker says at the
end of its training ("worker 0 read 240 records of its share of ... (shards 0-5 of 12)")."""
from __future__ import annotations

import re

from .messages import say
from .runs import Run, stops

SHARE = re.compile(r"worker (\d+) read (\d+) records of its share of .* \(shards (\d+)-(\d+) of (\d+)\)")
WHOLE = re.compile(r"is read whole by each of the \d+ workers: (.*)")


def report_shares(run: Run, total: int) -> None:
    """One line per start of ``run`` that read in logical shards: each worker's records and
    shards, and whether each is within one local batch of an even share; for a run of several
    workers that reads the whole pipeline, one line that says so (and why, if a worker said)."""
    at = [0] + [stop[3] for stop in stops(run)] + [total]
    whole_said = False
    for number, outputs in enumerate(run.workers):
        found = sorted(tuple(int(g) for g in m.groups()) for out in outputs for m in SHARE.finditer(out))
        if not found and (len(outputs) == 1 or whole_said):  # (a run that began reading it whole goes on so)
            continue
        where = f"{run.name} run" + (f", start {number + 1}" if len(run.workers) > 1 else "")
        where += f" ({len(outputs)} workers, global steps {at[number] + 1}-{at[number + 1]})"
        if found:
            say(f"{where}: {_shares(found, at[number + 1] - at[number])}")
            continue
        whole_said = True
        why = next((m.group(1).strip() for out in outputs for m in WHOLE.finditer(out)), None)
        say(f"{where}: the training data is not read in logical shards of files: every worker reads all of it"
            + (f"; {why}" if why else ""))


def _shares(found: list[tuple], steps: int) -> str:
    each = ", ".join(f"worker {w}: {r} records (shards {a}-{b} of {n})" for w, r, a, b, n in found)
    records = sum(r for _, r, *_ in found)
    even, batch = records / len(found), records / len(found) / max(steps, 1)
    off = [(w, r) for w, r, *_ in found if abs(r - even) > batch]
    if not off:
        return f"{each}; each within one batch ({batch:g}) of an even share ({even:g})"
    uneven = ", ".join(f"worker {w} {r - even:+g}" for w, r in off)
    return f"{each}; uneven: {uneven} records from an even share ({even:g}), more than one batch ({batch:g})"
