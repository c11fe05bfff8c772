"""Executions: the runs of ``steps_per_execution`` steps inside one ``tf.function`` call.

``model.compile(steps_per_execution=N)`` makes ``fit`` run N steps per call,
which saves the host's per-step overhead. The loop does the same, and
everything that acts at step boundaries (a stop, a save, a learning-rate
change, the multi-worker agreement, batch callbacks, STEP lines) acts at the
boundaries between executions instead.

Executions are aligned to the epoch's start, as in ``fit``: they begin at
steps 0, N, 2N, ... of every epoch, and the last one of an epoch may be
shorter. A run resumed at step k of an epoch first runs up to the next
multiple of N (a shorter execution), so a resumed run's executions end where
an uninterrupted run's do. The arithmetic is here, free of TensorFlow, so it
can be tested alone.
"""
from __future__ import annotations


def length(step_in_epoch: int, steps_per_epoch: int | None, n: int) -> int:
    """Steps of the execution that starts at ``step_in_epoch``: up to the next multiple of ``n``
    counted from the epoch's start, never past the epoch's end (None: not known yet; the
    execution then ends early if the data does)."""
    aligned = n - step_in_epoch % n
    return aligned if steps_per_epoch is None else min(aligned, steps_per_epoch - step_in_epoch)


def batch_numbers(step_in_epoch: int, n: int) -> tuple[int, int]:
    """The batch numbers ``fit`` passes to ``on_*_batch_begin``/``on_*_batch_end`` for the
    execution starting at ``step_in_epoch``: its first step, and the last step of its aligned
    block of ``n`` (like ``fit``, an epoch's shorter last execution reports its block's end)."""
    return step_in_epoch, (step_in_epoch // n + 1) * n - 1


def crossed(before: int, after: int, every: int | None) -> bool:
    """Whether counting from ``before`` to ``after`` steps passed a multiple of ``every``: "every
    ``every`` steps" when executions may jump over the multiple itself."""
    return bool(every) and after // every > before // every
