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

With ``--workers N`` every start is N local worker processes (TF_CONFIG on
127.0.0.1), each stop signals all of them, and each worker's share of a
pipeline read in logical shards is reported from what the workers say. With
``--resume-workers M`` the interrupted run resumes on M workers; the weights
cannot be bitwise equal then, so a data check reads the job's pipeline as the
workers of each start read it and checks that every record of each shard's
pass was trained exactly once.

Modules: ``plan`` (flags -> Plan), ``runs`` (the ``train`` subprocesses and
what their output says), ``compare`` (the checkpoints' variables),
``report`` (the verdict and its likely causes), ``shares`` (each worker's
share), ``records`` and ``simulate`` (the data check), ``command`` (the phases).
"""
from .command import main

__all__ = ["main"]
