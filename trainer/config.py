"""The one configuration object of a run, its presets and its validation.

argparse lives only at the edges (``trainer.cli``, ``jobs/``); everything
inside the package takes a :class:`TrainConfig`.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any


class ConfigError(ValueError):
    """A bad setting: names the field/flag, what was expected and a hint."""

    def __init__(self, name: str, problem: str, hint: str = ""):
        self.name = name
        flag = "--" + name.replace("_", "-")
        msg = f"{flag}: {problem}"
        if hint:
            msg += f" (hint: {hint})"
        super().__init__(msg)


# Fields that define the model and the data order. A run directory written
# with one set of these cannot be resumed with another.
IDENTITY_FIELDS = (
    "stages", "filters", "image_size", "weight_decay", "train_size", "val_size",
    "batch_size", "seed", "augment",
)

PRESETS: dict[str, dict[str, Any]] = {
    # Finishes on a 2-core laptop CPU in a few minutes.
    "small": dict(epochs=4, batch_size=128, lr=0.1, stages=(1, 1, 1),
                  filters=(16, 16, 32, 64), train_size=12000, val_size=2000),
    # The ResNet of the classic start/stop/resume tutorial.
    "reference": dict(epochs=80, batch_size=128, lr=0.1, stages=(9, 9, 9),
                      filters=(64, 64, 128, 256), train_size=None, val_size=None),
    # For tests: seconds per epoch.
    "tiny": dict(epochs=3, batch_size=32, lr=0.05, stages=(1,), filters=(4, 8),
                 train_size=512, val_size=128, image_size=16),
}


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str
    preset: str = "small"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    stages: tuple[int, ...] = (1, 1, 1)
    filters: tuple[int, ...] = (16, 16, 32, 64)
    image_size: int = 32
    augment: bool = True
    train_size: int | None = 12000
    val_size: int | None = 2000
    seed: int = 42
    deterministic: bool = True
    save_every_steps: int | None = None
    save_every_seconds: float | None = 120.0
    max_to_keep: int = 3
    data_dir: str | None = None
    storage_options: dict = field(default_factory=dict)
    staging_dir: str | None = None
    flush_timeout_s: float = 20.0  # a stop waits this long for uploads: keep it under SLURM's KillWait (30 s)
    quiet: bool = False
    tensorboard: bool = True

    @classmethod
    def from_preset(cls, run_dir: str, preset: str = "small", **overrides) -> TrainConfig:
        """Preset values, then every override that is not None ("all" unsets a size)."""
        if preset not in PRESETS:
            raise ConfigError("preset", f"unknown preset {preset!r}",
                              f"choose one of {', '.join(PRESETS)}")
        values = dict(PRESETS[preset])
        values.update({k: (None if v == "all" else v) for k, v in overrides.items() if v is not None})
        cfg = cls(run_dir=run_dir, preset=preset, **values)
        cfg.validate()
        return cfg

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("run_dir", "is empty", "give a directory or URL, e.g. runs/fmnist")
        _positive_int(self, "epochs")
        _positive_int(self, "batch_size")
        _positive_int(self, "image_size")
        if self.image_size < 8:
            raise ConfigError("image_size", f"must be >= 8, got {self.image_size}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError("lr", f"must be a finite number > 0, got {self.lr!r}")
        if not (0 <= self.momentum < 1):
            raise ConfigError("momentum", f"must be in [0, 1), got {self.momentum!r}")
        if not (self.weight_decay >= 0 and math.isfinite(self.weight_decay)):
            raise ConfigError("weight_decay", f"must be >= 0, got {self.weight_decay!r}")
        if not self.stages or any(s < 1 for s in self.stages):
            raise ConfigError("stages", f"needs one or more counts >= 1, got {self.stages!r}",
                              "e.g. --stages 9,9,9")
        if len(self.filters) != len(self.stages) + 1 or any(f < 4 for f in self.filters):
            raise ConfigError("filters", f"needs {len(self.stages) + 1} values >= 4 (stem + one "
                              f"per stage), got {self.filters!r}", "e.g. --filters 64,64,128,256")
        for name in ("train_size", "val_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"must be a positive integer or unset, got {value!r}")
        if self.train_size is not None and self.train_size < self.batch_size:
            raise ConfigError("train_size", f"{self.train_size} is smaller than one batch "
                              f"({self.batch_size})", "lower --batch-size")
        if self.save_every_steps is not None and self.save_every_steps < 1:
            raise ConfigError("save_every_steps", f"must be >= 1 or unset, got {self.save_every_steps}")
        if self.save_every_seconds is not None and not (self.save_every_seconds > 0):
            raise ConfigError("save_every_seconds", f"must be > 0 or unset, got {self.save_every_seconds}")
        if not (isinstance(self.flush_timeout_s, (int, float)) and 0 < self.flush_timeout_s < math.inf):
            raise ConfigError("flush_timeout_s", f"must be a number of seconds > 0, got {self.flush_timeout_s!r}",
                              "keep it under the scheduler's grace period (SLURM KillWait: 30 s)")
        if self.max_to_keep < 2:
            raise ConfigError("max_to_keep", f"must be >= 2, got {self.max_to_keep}",
                              "keeping two means a corrupt newest checkpoint can fall back")
        if not isinstance(self.storage_options, dict):
            raise ConfigError("storage_options", "must be a JSON object",
                              'e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')

    def identity(self) -> dict[str, Any]:
        """The settings that must not change across resumes of one run."""
        return {k: _jsonable(getattr(self, k)) for k in IDENTITY_FIELDS}

    def to_json(self) -> str:
        data = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}
        data.pop("storage_options")  # may hold credentials
        return json.dumps(data, indent=2, sort_keys=True)


def _positive_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _jsonable(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value
