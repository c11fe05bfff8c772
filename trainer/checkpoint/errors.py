"""The checkpoint errors, apart from the modules that raise them, so that the commit protocol
(which must not load TensorFlow) and the TensorFlow snapshot share one hierarchy."""
from ..errors import CHECKPOINT_ERROR, TrainerError


class CheckpointError(TrainerError, RuntimeError, exit_code=CHECKPOINT_ERROR):
    """No checkpoint can be used although the run has some."""


class IncompatibleCheckpoint(CheckpointError):
    """The checkpoint holds a different model; restoring would be partial."""


class CorruptCheckpoint(CheckpointError):
    pass


class CheckpointWriteError(CheckpointError):
    """A background write failed (e.g. disk full); earlier checkpoints are intact."""
