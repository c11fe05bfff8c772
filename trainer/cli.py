"""Command line: ``python -m trainer {train,lr,status}``.

The only place that parses flags; it turns them into a TrainConfig and maps
errors to the exit codes of ``trainer.exitcodes``.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys

from . import exitcodes
from .config import PRESETS, ConfigError, TrainConfig
from .signals import StopRequest


def _int_list(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers such as 9,9,9, got {text!r}")


def _size(text: str):
    if text == "all":
        return "all"
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of images or 'all', got {text!r}")


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc}); expected e.g. "
                                         '\'{"endpoint_url": "http://127.0.0.1:9000"}\'')
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object")
    return value


def _add_storage_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--storage-options", type=_json_object, default=None, metavar="JSON",
                   help="fsspec options for a remote run dir, e.g. '{\"endpoint_url\": ...}' "
                        "(default: $TRAINER_STORAGE_OPTIONS)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="start or resume training",
                       description="Start a run, or resume it from its latest checkpoint.")
    t.add_argument("--run-dir", required=True, help="local folder or fsspec URL (gs://, s3://, ...)")
    t.add_argument("--preset", default="small", choices=sorted(PRESETS),
                   help="small: minutes on a laptop CPU (default); reference: the tutorial's ResNet")
    t.add_argument("--fresh", action="store_true",
                   help="start over; an existing local run is moved to <run-dir>.bak-<time>")
    for flag, kind, helptext in (
            ("--epochs", int, "total epochs of the run"), ("--batch-size", int, None),
            ("--lr", float, "initial learning rate (use `lr` to change a running run)"),
            ("--momentum", float, None), ("--weight-decay", float, "L2 factor"),
            ("--stages", _int_list, "residual blocks per stage, e.g. 9,9,9"),
            ("--filters", _int_list, "stem + per-stage filters, e.g. 64,64,128,256"),
            ("--image-size", int, None), ("--train-size", _size, "training images or 'all'"),
            ("--val-size", _size, "validation images or 'all'"), ("--seed", int, None),
            ("--save-every-steps", int, "also save every N steps"),
            ("--save-every-seconds", float, "also save every T seconds (default 120)"),
            ("--max-to-keep", int, "committed checkpoints to keep (>= 2, default 3)"),
            ("--data-dir", str, "folder with the four Fashion-MNIST IDX files"),
            ("--staging-dir", str, "local folder for checkpoints of a remote run dir"),
            ("--flush-timeout-s", float, "seconds a stop waits for uploads (default 20, under SLURM's KillWait)")):
        t.add_argument(flag, type=kind, default=None, help=helptext)
    _add_storage_flag(t)
    t.add_argument("--no-augment", dest="augment", action="store_false", default=None)
    t.add_argument("--no-deterministic", dest="deterministic", action="store_false", default=None,
                   help="allow nondeterministic TF ops (faster on some GPUs, resume no longer bitwise exact)")
    t.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    t.add_argument("--quiet", action="store_true", default=None, help="no progress bar")

    lr = sub.add_parser("lr", help="set the learning rate applied at the next start",
                        description="Write <run-dir>/lr_override; the next start applies it.")
    lr.add_argument("run_dir")
    lr.add_argument("value", help="e.g. 1e-2")
    _add_storage_flag(lr)

    st = sub.add_parser("status", help="show where a run is")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    _add_storage_flag(st)
    return parser


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = {k: getattr(args, k) for k in (
        "epochs", "batch_size", "lr", "momentum", "weight_decay", "stages", "filters", "image_size",
        "train_size", "val_size", "seed", "save_every_steps", "save_every_seconds", "max_to_keep",
        "data_dir", "staging_dir", "flush_timeout_s", "augment", "deterministic", "tensorboard", "quiet")}
    return TrainConfig.from_preset(args.run_dir, args.preset,
                                   storage_options=_storage_options(args), **overrides)


def _storage_options(args) -> dict:
    if args.storage_options is not None:
        return args.storage_options
    env = os.environ.get("TRAINER_STORAGE_OPTIONS")
    if not env:
        return {}
    try:
        return _json_object(env)
    except argparse.ArgumentTypeError as exc:
        raise ConfigError("storage_options", f"$TRAINER_STORAGE_OPTIONS: {exc}") from None


def setup_logging() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[trainer] %(levelname)s %(message)s")
    for noisy in ("absl", "tensorflow", "fsspec", "botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    setup_logging()
    log = logging.getLogger("trainer")
    try:
        if args.command == "train":
            cfg = config_from_args(args)
            # Catch stop signals before the slow TensorFlow import, so that even
            # a signal during start-up ends with the documented exit code.
            with StopRequest() as stop:
                from .run import train
                resume = "python -m trainer " + shlex.join(a for a in argv if a != "--fresh")
                return train(cfg, fresh=args.fresh, resume_command=resume, stop=stop).exit_code
        if args.command == "lr":
            from .commands import set_lr
            return set_lr(args.run_dir, args.value, _storage_options(args))
        from .commands import show_status
        return show_status(args.run_dir, _storage_options(args), as_json=args.json)
    except ConfigError as exc:
        log.error("%s", exc)
        return exitcodes.BAD_INPUT
