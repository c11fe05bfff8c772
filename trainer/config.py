"""The one configuration object of a run (the trainer's own settings) and its validation.

argparse lives only at the edges (``trainer.cli``, ``jobs/``); everything
inside the package takes a :class:`TrainConfig`. What the model and data are
is the job's business (``trainer.job``); its settings travel beside this.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .errors import BAD_INPUT, TrainerError

# Fields renamed since an earlier release (for one unit suffix, `_seconds`, everywhere): the old
# name is still accepted where users and old run dirs give names (trainer.fit keywords, the
# config.json of runs written before) and means the new one.
RENAMED = {"flush_timeout_s": "flush_timeout_seconds"}


def current_names(options: dict) -> dict:
    """``options`` with fields given under an old name renamed; the new name wins if both are given."""
    return {RENAMED.get(k, k): v for k, v in options.items() if not (k in RENAMED and RENAMED[k] in options)}


class ConfigError(TrainerError, ValueError, exit_code=BAD_INPUT):
    """A bad setting: names the field/flag, what was expected and a hint."""

    def __init__(self, name: str, problem: str, hint: str = ""):
        self.name = name
        flag = "--" + name.replace("_", "-")
        msg = f"{flag}: {problem}"
        if hint:
            msg += f" (hint: {hint})"
        super().__init__(msg)


# Trainer settings that define the data order; the job's settings add their own.
IDENTITY_FIELDS = ("seed",)
# --strategy's choices (trainer.cluster.distribute builds them): named here so that validating a
# config does not import TensorFlow
STRATEGIES = ("auto", "default", "mirrored", "multi-worker")
# --log-format's choices: words and Keras's progress for people, STEP/EPOCH JSON lines for scripts
LOG_FORMATS = ("human", "json")
LOG_FORMAT_ENV = "TRAINER_LOG_FORMAT"
# How long a worker of a multi-worker job waits for the others (trainer.cluster.peers applies it):
# at start-up, for a peer that never comes, and inside TensorFlow for one that stops answering.
DEFAULT_PEER_TIMEOUT_SECONDS = 300.0
# where a preemption notice can come from (trainer.steering.notices watches them; the workers'
# agreement gives each a slot)
NOTICE_SOURCES = ("signal", "slurm", "aws", "aws-rebalance", "gce", "gce-maintenance", "azure")
NOTICE_PLATFORMS = ("aws", "gce", "azure")  # what --notices may list


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str
    epochs: int = 10
    seed: int = 42
    deterministic: bool = True
    strategy: str = "auto"
    cpu_devices: int | None = None      # split the CPU into N logical devices: MirroredStrategy over them
    snapshot_on_device: bool = False    # keep the save snapshot beside the variables (accelerator memory)
    save_every_steps: int | None = None
    save_every_seconds: float | None = 120.0
    max_to_keep: int = 3
    keep_every_epochs: int | None = 5   # milestone checkpoints retention never prunes
    lr_poll_seconds: float = 10.0       # how often a training run looks for `lr` requests
    storage_options: dict = field(default_factory=dict)
    staging_dir: str | None = None
    flush_timeout_seconds: float = 20.0  # a stop waits this long for uploads: keep it under SLURM's KillWait (30 s)
    peer_timeout_seconds: float = DEFAULT_PEER_TIMEOUT_SECONDS  # then a lost worker ends the others (exit 6)
    # a streamed pipeline's logical shards of files (fixed when a run starts): None picks them when the run
    # has several workers, 0 has every worker read the whole stream (trainer.data.sharded)
    data_shards: int | None = None
    quiet: bool = False
    log_every_steps: int | None = None
    log_format: str = "human"           # "json": STEP/EPOCH lines on stdout instead of Keras's progress
    tensorboard: bool = True
    export: bool = True                 # write <run-dir>/model.keras at the end
    max_steps: int | None = None        # end after this global step, as if the epochs ended there (verify)
    # the clouds to watch for preemption notices: auto (from the DMI strings), off, or e.g. "aws,gce"
    notices: str = field(default_factory=lambda: os.environ.get("TRAINER_NOTICES") or "auto")
    notice_margin_seconds: float = 5.0  # a stop before a deadline leaves this much beyond a step and a save

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if not self.run_dir:
            raise ConfigError("run_dir", "is empty", "give a directory or URL, e.g. runs/fmnist")
        _positive_int(self, "epochs")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise ConfigError("seed", f"must be an integer >= 0, got {self.seed!r}")
        if self.strategy not in STRATEGIES:
            raise ConfigError("strategy", f"must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}")
        if self.log_format not in LOG_FORMATS:
            raise ConfigError("log_format", f"must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}")
        if self.cpu_devices is not None and self.strategy in ("default", "multi-worker"):
            raise ConfigError("cpu_devices", f"trains one process over N logical CPU devices with "
                              f"MirroredStrategy; it cannot be combined with --strategy {self.strategy}",
                              "use --strategy auto or mirrored")
        if self.data_shards is not None and (not isinstance(self.data_shards, int) or self.data_shards < 0):
            raise ConfigError("data_shards", f"must be an integer >= 0 or unset, got {self.data_shards!r}",
                              "0 reads the whole stream on every worker")
        for name in ("save_every_steps", "keep_every_epochs", "log_every_steps", "cpu_devices", "max_steps"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(name, f"must be >= 1 or unset, got {value!r}")
        if self.save_every_seconds is not None and not (self.save_every_seconds > 0):
            raise ConfigError("save_every_seconds", f"must be > 0 or unset, got {self.save_every_seconds}")
        _seconds(self, "lr_poll_seconds")
        _seconds(self, "flush_timeout_seconds", "keep it under the scheduler's grace period (SLURM KillWait: 30 s)")
        _seconds(self, "peer_timeout_seconds", f"the default, {DEFAULT_PEER_TIMEOUT_SECONDS:g}, suits most clusters")
        _check_notices(self.notices)
        if not (isinstance(self.notice_margin_seconds, (int, float)) and 0 <= self.notice_margin_seconds < math.inf):
            raise ConfigError("notice_margin_seconds",
                              f"must be a number of seconds >= 0, got {self.notice_margin_seconds!r}")
        if not isinstance(self.max_to_keep, int) or self.max_to_keep < 2:
            raise ConfigError("max_to_keep", f"must be >= 2, got {self.max_to_keep}",
                              "keeping two means a corrupt newest checkpoint can fall back")
        if not isinstance(self.storage_options, dict):
            raise ConfigError("storage_options", "must be a JSON object",
                              'e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\'')

    def identity(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in IDENTITY_FIELDS}

    def to_json(self) -> dict:
        data = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        data.pop("storage_options")  # may hold credentials
        return data


def log_format_from(environ) -> str:
    """The output format ``$TRAINER_LOG_FORMAT`` asks for (``human`` when unset); a bad value names
    the variable."""
    value = environ.get(LOG_FORMAT_ENV) or "human"
    if value not in LOG_FORMATS:
        raise ConfigError("log_format", f"${LOG_FORMAT_ENV} must be one of {', '.join(LOG_FORMATS)}, got {value!r}")
    return value


def dumps(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True)


def _check_notices(value) -> None:
    names = [n.strip() for n in str(value).lower().split(",") if n.strip()] if isinstance(value, str) else [None]
    if names in (["auto"], ["off"]) or (names and all(n in NOTICE_PLATFORMS for n in names)):
        return
    raise ConfigError("notices", f"expected auto, off or a comma-separated list of {', '.join(NOTICE_PLATFORMS)}, "
                      f"got {value!r}", "$TRAINER_NOTICES gives the default")


def _positive_int(cfg: TrainConfig, name: str) -> None:
    value = getattr(cfg, name)
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(name, f"must be a positive integer, got {value!r}")


def _seconds(cfg: TrainConfig, name: str, hint: str = "") -> None:
    value = getattr(cfg, name)
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < math.inf):
        raise ConfigError(name, f"must be a number of seconds > 0, got {value!r}", hint)
