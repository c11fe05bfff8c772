"""Exit codes, the expected errors that carry them, and the one place an error becomes output.

The codes are what ``python -m trainer train`` (and every other command)
returns (documented in README). Launchers (``slurm/train.sh``,
``trainer.launcher``) decide on requeueing from these alone, so they are part
of the public interface.

Every expected failure is a :class:`TrainerError` whose class names its exit
code (``class JobError(TrainerError, ValueError, exit_code=BAD_INPUT)``); its
message is the whole story, so it is shown as one line without a traceback by
:func:`report`. Anything else is a bug or an unforeseen failure: a traceback
and exit code 1.
"""
from __future__ import annotations

import logging
import signal
from typing import TextIO

DONE = 0             # training finished (or was already finished)
CRASH = 1            # an unexpected error; a traceback was printed
BAD_INPUT = 2        # bad flag, config, LR override file or run dir; nothing was trained
CHECKPOINT_ERROR = 3  # no usable checkpoint although the run has some, or a different model
DATA_ERROR = 4       # the dataset is missing or damaged
STORAGE_ERROR = 5    # the run directory's storage cannot be used (remote, or local permissions)
PEER_LOST = 6        # another worker of a multi-worker job died; checkpoints are intact: requeue

log = logging.getLogger("trainer")


def interrupted(signum: int) -> int:
    """Shell convention: a run stopped by signal N exits with 128 + N."""
    return 128 + int(signum)


def is_interrupted(code: int) -> bool:
    return code - 128 in {int(s) for s in signal.valid_signals()}


class TrainerError(Exception):
    """An expected failure; ``exit_code`` (set per class with the ``exit_code=`` class
    keyword) is what the command line exits with."""
    exit_code = CRASH

    def __init_subclass__(cls, exit_code: int | None = None, **kwargs):
        super().__init_subclass__(**kwargs)
        if exit_code is not None:
            cls.exit_code = exit_code


def report(exc: Exception, stream: TextIO | None = None) -> int:
    """Show ``exc`` as one line and return its exit code: logged (``[trainer] ERROR ...`` on
    stderr, as the rest of a run's log) or, for commands whose output is what they print,
    ``error: ...`` on ``stream``. An exception that is no TrainerError is one an entry point
    accepts as bad input (a plain ValueError from parsing), so exit 2."""
    if stream is None:
        log.error("%s", exc)
    else:
        print(f"error: {exc}", file=stream)
    return getattr(exc, "exit_code", BAD_INPUT)
