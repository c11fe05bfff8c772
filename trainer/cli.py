"""Command line: ``python -m trainer {train,verify,lr,status,export,jobs}`` (or the ``trainer`` script).

The only place that parses flags. ``train`` parses in two stages: ``--job``
first, then the trainer's flags together with the flags generated from the
job's ``Settings`` dataclass (so ``--help`` lists them). Expected errors are
shown and mapped to exit codes by ``trainer.errors.report``. ``--help`` is
plain text: :class:`PlainHelp` drops the backquotes a job's help may carry.
"""
from __future__ import annotations

import argparse
import atexit
import gc
import io
import json
import logging
import os
import re
import shlex
import sys
import threading

from . import rundir
from .config import LOG_FORMATS, ConfigError, TrainConfig, log_format_from
from .errors import TrainerError, report
from .steering import lr_override
from .steering.signals import StopRequest, ignore_from_now_on

# how this process was started, for usage lines and the printed resume command
PROG = "python -m trainer" if sys.argv[0].endswith("__main__.py") else "trainer"
TRAINER_FLAGS = ("epochs", "seed", "deterministic", "strategy", "cpu_devices", "snapshot_on_device",
                 "save_every_steps", "save_every_seconds",
                 "max_to_keep", "keep_every_epochs", "lr_poll_seconds", "staging_dir", "flush_timeout_seconds",
                 "peer_timeout_seconds", "data_shards",
                 "quiet", "log_every_steps", "log_format", "tensorboard", "export", "max_steps", "notices",
                 "notice_margin_seconds")
DESCRIPTION = ("Train a Keras job that can be stopped at any moment and resumed exactly. "
               "Run a command with --help for its flags.")


class PlainHelp(argparse.HelpFormatter):
    """Help as plain text: the backquotes of reStructuredText or Markdown (in a job's own help
    texts) are dropped, the words kept."""

    def _expand_help(self, action):
        return _plain(super()._expand_help(action))

    def _format_text(self, text):
        return super()._format_text(_plain(text))


def _plain(text: str) -> str:
    return re.sub(r"`{1,2}([^`]*)`{1,2}", r"\1", text)


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


def _add_verbose_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--verbose", action="store_true", help="also show TensorFlow's own start-up log lines")


def train_parser(job=None) -> argparse.ArgumentParser:
    """The ``train`` flags; with ``job``, also the job's presets and settings."""
    t = argparse.ArgumentParser(prog=f"{PROG} train", formatter_class=PlainHelp,
                                description="Start a run, or resume it from its latest checkpoint. "
                                            "Re-running the same command always resumes.")
    t.add_argument("--run-dir", required=True, help="local folder or fsspec URL (gs://, s3://, ...)")
    t.add_argument("--job", default=None, help=f"an example's name ({PROG} jobs lists them), a job file "
                                               "(path/to/job.py) or a module (mypkg.jobs.cifar); default: "
                                               "fashion_mnist")
    presets = list(job.presets) if job else []
    t.add_argument("--preset", default=None, choices=presets or None,
                   help=f"the job's named settings ({', '.join(presets) or 'none'}; default: "
                        f"{job.default_preset if job else '-'})")
    t.add_argument("--fresh", action="store_true",
                   help="start over; an existing local run is moved to <run-dir>.bak-<time>")
    t.add_argument("--from", dest="rollback_to", default=None, metavar="ckpt-N|epoch-E",
                   help="go back to this kept snapshot first: later checkpoints and the history move to "
                        "<run-dir>/archive/ (the status command lists the milestones)")
    for flag, kind, helptext in (
            ("--epochs", int, "total epochs of the run (default: the preset's or the job's EPOCHS)"),
            ("--seed", int, "seeds the model's initial weights and every epoch's order (default 42)"),
            ("--strategy", str, "auto (default), default, mirrored or multi-worker"),
            ("--cpu-devices", int, "split the CPU into N logical devices and train with MirroredStrategy over "
                                   "them (N replicas in one process: try the multi-device path without GPUs)"),
            ("--save-every-steps", int, "also save every N steps"),
            ("--save-every-seconds", float, "also save every T seconds (default 120)"),
            ("--max-to-keep", int, "newest committed checkpoints to keep (>= 2, default 3)"),
            ("--keep-every-epochs", int, "keep the checkpoint of every N-th epoch for good (default 5)"),
            ("--lr-poll-seconds", float, "how often a running run looks for the lr command's requests (default 10)"),
            ("--log-every-steps", int, "also report every N-th step: a line in a log file, a STEP line with "
                                     "--log-format json (a terminal's progress bar shows every step)"),
            ("--max-steps", int, "end the run once global step N is done, with a checkpoint, as if its "
                                 "epochs ended there (a later start may raise it; verify bounds its runs so)"),
            ("--staging-dir", str, "local folder for checkpoints of a remote run dir"),
            ("--notices", str, "the clouds whose preemption notices to watch: auto (default: the one this "
                               "machine's DMI strings name, if any), off, or a list such as aws,gce,azure "
                               "(default: $TRAINER_NOTICES, else auto)"),
            ("--data-shards", int, "a streamed pipeline over files: read it in N logical shards of its files, "
                                   "each worker its share (fixed when the run starts; a resume may use any "
                                   "worker count that divides N). Default with several workers: the files, at "
                                   "most 64, a multiple of the worker count; 0: every worker reads it whole"),
            ("--notice-margin-seconds", float, "a stop before a notice's deadline leaves this much time beyond "
                                               "a step and a save (default 5)")):
        t.add_argument(flag, type=kind, default=None, help=helptext)
    t.add_argument("--flush-timeout-seconds", "--flush-timeout-s", dest="flush_timeout_seconds", type=float,
                   default=None, metavar="T",
                   help="seconds a stop waits for uploads (default 20, under SLURM's KillWait)")
    t.add_argument("--peer-timeout-seconds", type=float, default=None, metavar="T",
                   help="several workers: how long each waits for the others to start, or for one that "
                        "stopped answering, before it exits with code 6 for a requeue (default 300)")
    _add_storage_flag(t)
    t.add_argument("--no-deterministic", dest="deterministic", action="store_false", default=None,
                   help="allow nondeterministic TF ops (faster on some GPUs, resume no longer bitwise exact)")
    t.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None)
    t.add_argument("--snapshot-on-device", action="store_true", default=None,
                   help="keep each save's snapshot on the accelerator beside the variables (faster saves, "
                        "one more copy of the model and optimizer state in its memory; default: host memory)")
    t.add_argument("--no-export", dest="export", action="store_false", default=None,
                   help="do not write <run-dir>/model.keras at the end")
    t.add_argument("--quiet", action="store_true", default=None,
                   help="no progress bar or epoch lines (with --log-format json: no bar, EPOCH lines still)")
    t.add_argument("--log-format", choices=LOG_FORMATS, default=None,
                   help="human (default): Keras's progress bar in a terminal, one line per epoch in a log "
                        "file; json: STEP and EPOCH JSON lines on stdout, for scripts (default: "
                        "$TRAINER_LOG_FORMAT, else human). Either way <run-dir>/events.jsonl gets them")
    _add_verbose_flag(t)
    if job is not None and job.settings_cls is not None:
        from .settings import add_flags
        add_flags(t, job.settings_cls, {a for action in t._actions for a in action.option_strings},
                  job.label)
    return t


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, formatter_class=PlainHelp)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("train", help="start or resume training (train --help lists its flags)", add_help=False)
    sub.add_parser("verify", help="prove that a job resumes exactly: run it, stop it, compare "
                                  "(verify --help lists its flags)", add_help=False)

    lr = sub.add_parser("lr", formatter_class=PlainHelp, help="change a run's learning rate",
                        description="Request a learning-rate change: a run that is training applies it at "
                                    "a step boundary within --lr-poll-seconds (10 s by default); a stopped "
                                    "run applies it when it resumes.")
    lr.add_argument("run_dir")
    lr.add_argument("value", help="e.g. 1e-2")
    lr.add_argument("--at-epoch", type=int, default=None, metavar="E",
                    help="apply it when epoch E begins (0-based: after E epochs; queue a schedule in advance)")
    lr.add_argument("--create", action="store_true",
                    help="queue it in a path that holds no run yet (applied when a run starts there); "
                         "without it such a path is refused, so a typo cannot swallow the request")
    _add_storage_flag(lr)

    st = sub.add_parser("status", formatter_class=PlainHelp, help="show where a run is")
    st.add_argument("run_dir")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    _add_storage_flag(st)

    ex = sub.add_parser("export", formatter_class=PlainHelp, help="write a kept checkpoint as a .keras model file")
    ex.add_argument("run_dir")
    ex.add_argument("out", help="where to write it, e.g. model.keras (a local path or fsspec URL)")
    ex.add_argument("--from", dest="source", default=None, metavar="ckpt-N|epoch-E",
                    help="which checkpoint (default: the newest)")
    _add_storage_flag(ex)
    _add_verbose_flag(ex)

    jobs = sub.add_parser("jobs", formatter_class=PlainHelp,
                          help="list the example jobs (names for --job) and their files",
                          description="The example jobs that come with the package: their names (for "
                                      "train --job NAME) and their files, to copy one as your own job.")
    jobs.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


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


def setup_logging(verbose: bool = False) -> None:
    if verbose:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    else:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="[trainer] %(levelname)s %(message)s")
    for noisy in ("absl", "tensorflow", "fsspec", "botocore", "aiobotocore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


# Keras's optional integrations, which `import tensorflow` loads eagerly whenever they are installed:
# scikit-learn (keras.wrappers), IPython (notebook display in keras.saving) and matplotlib
# (keras.visualization). A training process uses none of them, and they make up about a third of
# the import's time, paid again at every start and requeue.
KERAS_EXTRAS = ("sklearn", "IPython", "matplotlib")


def import_tensorflow(quiet: bool) -> None:
    """Import TensorFlow for a training process, before the job does.

    Keras imports each of KERAS_EXTRAS only if it is installed; they are hidden during the
    import (Keras then takes them as not installed) and visible again right after, so a job
    imports them as usual. Quiet: the process's native stderr points at /dev/null meanwhile,
    since TensorFlow's start-up lines (absl, oneDNN, CPU features) ignore TF_CPP_MIN_LOG_LEVEL;
    a failing import still raises, and its traceback is printed after stderr is back."""
    hidden = [name for name in KERAS_EXTRAS if name not in sys.modules]
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        sys.modules.update(dict.fromkeys(hidden))  # None: `import name` raises ImportError
        if quiet:
            os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        for name in hidden:
            if sys.modules.get(name, False) is None:
                del sys.modules[name]
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def parse_train(argv: list[str]):
    """(TrainConfig, loaded job, args) from ``train`` arguments; loads the job to know its flags."""
    from .job import load
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--job", default=None)
    first.add_argument("--run-dir", default=None)
    first.add_argument("--verbose", action="store_true")
    known, _ = first.parse_known_args(argv)
    setup_logging(known.verbose)
    if known.run_dir and not {"-h", "--help"} & set(argv):  # before the slow imports: errors at once
        local = rundir.precheck_training(known.run_dir)
        if local is not None:
            lr_override.scan(local)  # a malformed request file (OverrideError)
    import_tensorflow(quiet=not known.verbose)
    job = load(known.job)
    args = train_parser(job).parse_args(argv)
    job_values = {}
    if job.settings_cls is not None:
        from .settings import fields
        job_values = {f.name: getattr(args, f.name) for f, _ in fields(job.settings_cls)}
    _, preset_epochs = job.choose(args.preset, job_values)
    overrides = {k: getattr(args, k) for k in TRAINER_FLAGS if getattr(args, k) is not None}
    overrides.setdefault("epochs", preset_epochs)
    overrides.setdefault("log_format", log_format_from(os.environ))
    if overrides["epochs"] is None:
        raise ConfigError("epochs", f"job {job.label} sets no default number of epochs",
                          "pass --epochs N, or set EPOCHS in the job")
    cfg = TrainConfig(args.run_dir, storage_options=_storage_options(args), **overrides)
    return cfg, job, args


def main(argv: list[str] | None = None) -> int:
    entry, argv = argv is None, sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "train":
        code = _train_main(argv[1:])
        if entry:
            end_process(code)
        return code
    if argv and argv[0] == "verify":
        setup_logging()
        from .verify import main as verify_main
        return verify_main(argv[1:], f"{PROG} verify")
    args = build_parser().parse_args(argv)
    setup_logging(getattr(args, "verbose", False))
    try:
        if args.command == "jobs":
            from .examples import show
            return show(as_json=args.json)
        if args.command == "lr":
            from .commands import set_lr
            return set_lr(args.run_dir, args.value, _storage_options(args), args.at_epoch, args.create)
        if args.command == "export":
            from .commands import export_model
            return export_model(args.run_dir, args.out, args.source, _storage_options(args))
        from .commands import show_status
        return show_status(args.run_dir, _storage_options(args), as_json=args.json)
    except ConfigError as exc:  # $TRAINER_STORAGE_OPTIONS
        return report(exc)


def end_process(code: int) -> None:
    """End a training process at once, without the interpreter's teardown of TensorFlow's
    modules and objects: seconds on a busy machine, after the run is saved and reported, which a
    requeue or a platform's deadline waits for. What an orderly exit does that matters still
    happens: atexit hooks run (a job's own too) and open files are flushed. A job's thread that
    still runs (not a daemon) is waited for by the usual exit instead: this returns."""
    if any(t.is_alive() and not t.daemon for t in threading.enumerate() if t is not threading.main_thread()):
        return
    atexit._run_exitfuncs()
    for obj in gc.get_objects():
        if isinstance(obj, io.IOBase):
            try:
                if not obj.closed:
                    obj.flush()
            except (OSError, ValueError):
                pass
    os._exit(code)


def _train_main(argv: list[str]) -> int:
    # Catch stop signals before the slow TensorFlow and job imports, so that even
    # a signal during start-up ends with the documented exit code.
    try:
        with StopRequest() as stop:
            try:
                cfg, job, args = parse_train(argv)
            except (TrainerError, ValueError) as exc:  # (a plain ValueError: a job's own check of its settings)
                setup_logging()
                return report(exc)
            from .run import train
            return train(cfg, job, fresh=args.fresh, rollback_to=args.rollback_to,
                         resume_command=f"{PROG} train " + shlex.join(_one_shot_flags_removed(argv)),
                         stop=stop).exit_code
    finally:
        ignore_from_now_on()


def _one_shot_flags_removed(argv: list[str]) -> list[str]:
    """The arguments that resume this run: without --fresh and --from (they act once)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--fresh" or arg.startswith("--from="):
            continue
        elif arg == "--from":
            skip = True
        else:
            out.append(arg)
    return out
