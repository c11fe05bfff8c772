"""Where the run is: the part of a checkpoint that is not weights or optimizer.

Serialized as JSON into one string variable of the TF checkpoint, so weights,
optimizer and position are always saved and restored together.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from .history_format import new_history


@dataclass
class TrainerState:
    epoch: int = 0               # epochs fully done
    step_in_epoch: int = 0       # batches of epoch ``epoch`` done
    global_step: int = 0
    lr: float = 0.0
    seed: int = 0
    epoch_seconds: float = 0.0   # training time spent in the current epoch so far
    history: dict = field(default_factory=new_history)
    applied_overrides: list = field(default_factory=list)  # digests of applied learning-rate requests
    stopped_early: bool = False  # a callback (e.g. EarlyStopping) ended the run
    callbacks: dict = field(default_factory=dict)  # each callback's state (trainer.training.callback_state)
    last_step_logs: dict | None = None  # a stop right after an epoch's last step: that step's logs
    steps_per_epoch: int | None = None  # data of unknown length: its epoch's steps, once the first ended

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> TrainerState:
        return cls(**json.loads(text))

    def position(self, steps_per_epoch: int | None) -> str:
        return (f"epoch {self.epoch + 1} step {self.step_in_epoch}/{steps_per_epoch or 'unknown'} "
                f"(global step {self.global_step})")
