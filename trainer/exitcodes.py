"""Process exit codes of ``python -m trainer train`` (documented in README).

Launchers (``slurm/train.sh``, ``trainer.launcher``) decide on requeueing from
these alone, so they are part of the public interface.
"""
import signal

DONE = 0             # training finished (or was already finished)
CRASH = 1            # an unexpected error; a traceback was printed
BAD_INPUT = 2        # bad flag, config, LR override file or run dir; nothing was trained
CHECKPOINT_ERROR = 3  # no usable checkpoint although the run has some, or a different model
DATA_ERROR = 4       # the dataset is missing or damaged
STORAGE_ERROR = 5    # the run directory's storage cannot be used (remote, or local permissions)
PEER_LOST = 6        # another worker of a multi-worker job died; checkpoints are intact: requeue


def interrupted(signum: int) -> int:
    """Shell convention: a run stopped by signal N exits with 128 + N."""
    return 128 + int(signum)


def is_interrupted(code: int) -> bool:
    return code - 128 in {int(s) for s in signal.valid_signals()}
