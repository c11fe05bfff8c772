"""What the loop does with preemption notices: use the time before a deadline, never miss it.

A notice with a deadline: commit a checkpoint at once (insurance), keep
training, and stop at the last step boundary that leaves room for the steps to
the next decision, a save (as long as this run's saves take) and the margin. A
deadline already too close for that: stop at once. A notice without a deadline
(a plain SIGTERM, SIGINT): stop at once, as ever. An advisory notice (AWS's
rebalance recommendation): save once, keep training.

The SLURM warning signal becomes a notice whose deadline is the job's end time
(looked up when the run starts, off the training thread); the same signal far
from the end is a preemption, with no time to spare.
"""
from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..steering.metadata import LABELS, Notice
from ..steering.notices import EndTime, Watcher, slurm_deadline
from ..steering.signals import StopRequest

log = logging.getLogger("trainer")

SLURM_WARNING = signal.SIGUSR1       # what slurm/train.sh asks SLURM for (--signal=B:USR1@N)
SLURM_WARNING_WINDOW_S = 300.0      # a warning this close to the end time is the time limit's


def should_stop_now(remaining: float, step_seconds: float, save_seconds: float, margin: float,
                    steps_ahead: int = 1) -> bool:
    """Stop at this boundary unless ``steps_ahead`` more steps, then a save, still end ``margin``
    seconds before the deadline (``remaining`` seconds away)."""
    return remaining < steps_ahead * step_seconds + save_seconds + margin


@dataclass
class Local:
    """What this worker would do at this boundary, on account of signals and notices."""
    stop: int | None = None   # the signal to stop with
    save: bool = False        # commit a checkpoint now and keep training
    sources: tuple = ()       # the notices behind ``stop`` or ``save``


@dataclass
class Deadlines:
    """The notices this worker has seen, with their history records, and the measured times a
    stop before a deadline must leave room for."""
    stop: StopRequest
    watcher: Watcher | None = None
    end_time: EndTime | None = None     # the SLURM job's, for its warning signal
    margin: float = 5.0
    clock: Callable[[], float] = time.time
    seen: list = field(default_factory=list)   # [(notice, its history record)], in order
    active: tuple | None = None         # the (notice, record) with the earliest deadline that stops the run
    step_seconds: float = 0.0
    save_seconds: float = 0.0
    epoch_turn_seconds: float = 0.0     # from an epoch's last step to the next one's first: validation,
                                        # callbacks, the epoch-end save, the new epoch's data
    first_execution_seconds: float | None = None  # this start's first execution, which traced the train step
    _signal_taken: bool = False

    # -- measuring --------------------------------------------------------
    def measure_steps(self, seconds: float, count: int) -> None:
        """One execution's time: the slower of it and the running average, so that one slow step
        does not catch the stop out."""
        per_step = seconds / max(count, 1)
        average = 0.8 * self.step_seconds + 0.2 * per_step if self.step_seconds else per_step
        self.step_seconds = max(average, per_step)

    def measure_epoch_turn(self, seconds: float) -> None:
        """The latest epoch turn, or most of the slowest before it (the first one traces)."""
        self.epoch_turn_seconds = max(seconds, 0.8 * self.epoch_turn_seconds)

    def measure_save(self, seconds: float) -> None:
        self.save_seconds = max(self.save_seconds, seconds)

    def measure_execution(self, seconds: float, count: int) -> None:
        """An execution of ``count`` steps: the first one's time apart (it traced), then per step."""
        if self.first_execution_seconds is None:
            self.first_execution_seconds = seconds
        else:
            self.measure_steps(seconds, count)

    def epoch_turn(self, validation_steps: int) -> float:
        """The next epoch's turn: as this start measured it, or, before it made one, an estimate
        (a resumed run's notice may come before its first turn, which traces the validation as
        the first execution traced the train step, then runs its steps, and saves)."""
        if self.epoch_turn_seconds:
            return self.epoch_turn_seconds
        return (self.first_execution_seconds or 0.0) + validation_steps * self.step_seconds + self.save_seconds

    # -- deciding ---------------------------------------------------------
    def signal_stop(self) -> int | None:
        """A received signal that stops at once (see ``stops_at_once``); SLURM's time-limit
        warning with the job's end time known becomes a notice with a deadline instead."""
        signum = self.stop.signum
        if signum is None or self._signal_taken:
            return None
        if self.stops_at_once(signum):
            return signum
        deadline = self._slurm_deadline(signum)
        if deadline is not None:  # (else its end time is still being looked up: a little longer)
            self._signal_taken = True
            self._take(Notice("slurm", deadline, detail="job ends", signum=signum))
        return None

    def stops_at_once(self, signum: int) -> bool:
        """Whether ``signum`` ends the run (or a wait for the other workers) at once: any signal but
        SLURM's time-limit warning near the job's end time, which leaves time to use. Reads
        only, so a thread that watches a wait may ask."""
        if self.end_time is None or signum != SLURM_WARNING:
            return True
        if not self.end_time.known:  # (looked up since the run started: wait a little, not for ever)
            return self.end_time.overdue
        return self._slurm_deadline(signum) is None

    def _slurm_deadline(self, signum: int) -> float | None:
        if not self.end_time.known:
            return None
        return slurm_deadline(signum, self.clock(), self.end_time.value, SLURM_WARNING, SLURM_WARNING_WINDOW_S)

    def local(self, where: dict, steps_ahead: int, extra_seconds: float = 0.0) -> Local:
        """This worker's view at a boundary (``where``: the position, for the records): new notices
        acted on, then whether the earliest deadline still leaves room for ``steps_ahead`` more
        steps (and ``extra_seconds``: an epoch's turn among them), a save and the margin."""
        out = Local(stop=self.signal_stop())
        for notice in self.watcher.take() if self.watcher else []:
            self._take(notice)
        new = [(n, r) for n, r in self.seen if "action" not in r]
        for notice, record in new:
            record.update(where)
            record["action"] = self._act(notice, record, out)
            log.warning("%s: %s", self.describe(notice), record["action"])
        sources = {n.source for n, _ in new}
        if self.active is not None and out.stop is None:
            notice = self.active[0]
            remaining = notice.deadline - self.clock()
            if should_stop_now(remaining - extra_seconds, self.step_seconds, self.save_seconds, self.margin,
                               steps_ahead):
                log.info("stopping before the deadline: %.1f s left; %d step(s) take %.2f s, %sa save %.2f s, "
                         "margin %g s", remaining, steps_ahead, steps_ahead * self.step_seconds,
                         f"an epoch's turn {extra_seconds:.2f} s, " if extra_seconds else "", self.save_seconds,
                         self.margin)
                out.stop = notice.signum
                sources.add(notice.source)
        if out.stop is not None or out.save:
            out.sources = tuple(sorted(sources))
        return out

    def _take(self, notice: Notice) -> None:
        self.seen.append((notice, {"kind": "notice", "source": notice.source, "detail": notice.detail,
                                   "deadline": iso(notice.deadline) if notice.deadline else None,
                                   "noticed_at": iso(self.clock())}))

    def _act(self, notice: Notice, record: dict, out: Local) -> str:
        """Act on a new notice; what was done, in words (for the log and the history)."""
        if notice.advisory:
            out.save = True
            return "saving once; training goes on"
        if notice.deadline is None:
            out.stop = out.stop or notice.signum
            return "no deadline given: stopping now"
        remaining = notice.deadline - self.clock()
        if self.active is None or notice.deadline < self.active[0].deadline:
            self.active = (notice, record)
        if remaining < self.save_seconds + self.margin:
            out.stop = out.stop or notice.signum
            return (f"the deadline is too close for a save ({remaining:.0f} s left; a save takes "
                    f"{self.save_seconds:.1f} s, margin {self.margin:g} s): stopping now")
        out.save = True
        return (f"{remaining:.0f} s left: committing a checkpoint now, then training until the last step "
                "that leaves time for a save")

    def record(self, history: dict) -> bool:
        """Put the notices' records into ``history`` (the ones not there yet); whether any was new."""
        new = [r for _, r in self.seen if "action" in r and not any(r is e for e in history["events"])]
        history["events"].extend(new)
        return bool(new)

    def acknowledge(self) -> None:
        """The run has stopped: platforms that wait for a word (Azure) may go ahead."""
        if self.watcher is not None and self.seen:
            self.watcher.acknowledge()

    def close(self) -> None:
        if self.watcher is not None:
            self.watcher.close()

    # -- saying -------------------------------------------------------------
    def describe(self, notice: Notice) -> str:
        what = f"{notice.detail} at {clock_time(notice.deadline)}".strip() if notice.deadline else notice.detail
        return f"{notice.label}: {what or 'no deadline'}"

    def stopping(self, global_step: int, checkpoint: int) -> bool:
        """The run stops at ``global_step`` with ``checkpoint``: completes the active notice's
        record (before that checkpoint is saved, so that it holds the record); whether there was one."""
        if self.active is None:
            return False
        notice, record = self.active
        record.update({"stopped_at_step": global_step, "checkpoint": checkpoint,
                       "seconds_left_at_stop": round(notice.deadline - self.clock(), 1)})
        return True

    def stop_summary(self, global_step: int, checkpoint: int | None, agreed: tuple) -> str | None:
        """The stop line's first part ("AWS spot notice: terminate at 12:01:30Z; trained 94 more
        steps; checkpoint ckpt-41, 18 s before the deadline"); None for a stop by a plain signal."""
        if self.active is None:
            others = [LABELS.get(s, s) for s in agreed if s != "signal"]
            return f"{' and '.join(others)} on another worker" if others else None
        notice, record = self.active
        left = notice.deadline - self.clock()
        trained = global_step - record.get("global_step", global_step)
        where = f"checkpoint ckpt-{checkpoint}" if checkpoint else "no new checkpoint needed"
        return (f"{self.describe(notice)}; trained {trained} more step{'s' * (trained != 1)}; {where}, "
                + (f"{left:.0f} s before the deadline" if left >= 0 else f"{-left:.0f} s after the deadline"))


def iso(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def clock_time(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%H:%M:%SZ")
