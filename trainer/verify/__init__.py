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

Modules: ``plan`` (flags -> Plan), ``runs`` (the ``train`` subprocesses and
what their output says), ``compare`` (the checkpoints' variables),
``report`` (the verdict and its likely causes), ``command`` (the phases).
"""
from .command import main

__all__ = ["main"]
