"""Sharded reading of a streamed pipeline vs global reading vs TensorFlow's FILE auto-sharding,
for 1, 2 and 4 workers on this machine (real processes, TF_CONFIG on 127.0.0.1).

A decode-heavy TFRecord job (bench/sharding_job.py: PNG images, a parallel decode and image
operations, a reshuffling shuffle buffer, a small model) is trained in three ways:

* ``global``: the trainer with ``--data-shards 0``: every worker reads every batch;
* ``sharded``: the trainer's default with several workers (logical shards of the files, each
  worker reading its block); with one worker ``--data-shards`` is what the largest worker
  count asks for, so that the 1-worker row shows the cost of reading in shards;
* ``tf-file``: a plain loop under MultiWorkerMirroredStrategy over
  ``strategy.experimental_distribute_dataset`` with FILE auto-sharding and ``strategy.run``
  of the same model's ``train_step`` (not resumable: the reference for input work).

For each it reports the time per epoch (steady state: the mean of the epochs after the first,
which traces), the records each worker decodes per epoch (in separate one-epoch runs whose
pipeline counts them through a ``py_function``, which the timed runs leave out: it would make
the trainer's pipeline non-checkpointable), and for the trainer the committed checkpoint's size
(and its iterator state) and the save stall (the time the training loop spends in a save,
the gathering of the shards' states included: the median of the epoch-end saves after the first).

tf.data's autotuning is on in the job's pipeline by default, as users have it (``--autotune
off`` turns it off in every mode); the trainer's sharded reading turns it off in its shards'
pipelines whatever the job says (with many shard iterators alive in a process, dropping a
finished one waited for its autotuning thread, longer each pass).

    python -m bench.sharding [--workers 1,2,4] [--epochs 3] [--files 32] [--records-per-file 64]
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

if not __package__:  # (run as a script: python bench/sharding.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.common import ENV, ROOT, markdown_table, write_json

HERE = "bench.sharding"
JOB = os.path.join(ROOT, "bench", "sharding_job.py")
MODES = ("global", "sharded", "tf-file")


# -- the workers ------------------------------------------------------------------------------
def trainer_worker(out: str, argv: list[str]) -> int:
    """The trainer's CLI in this process, with its saves and epoch ends timed."""
    from trainer.cli import main
    from trainer.data.streaming import StreamingData
    from trainer.training.progress import Progress
    from trainer.training.saver import Saver
    times = {"save_s": [], "capture_s": [], "epoch_end": [], "began": None}
    _timed(Saver, "save", times["save_s"])
    _timed(StreamingData, "capture", times["capture_s"])
    begin = Progress.epoch_begin

    def epoch_begin(self, epoch):
        times["began"] = times["began"] or time.perf_counter()
        return begin(self, epoch)
    end = Progress.epoch_end

    def epoch_end(self, epoch, logs):
        times["epoch_end"].append(time.perf_counter())
        return end(self, epoch, logs)
    Progress.epoch_begin, Progress.epoch_end = epoch_begin, epoch_end
    code = main(argv)
    with open(out, "w") as fh:
        json.dump({**times, "code": code}, fh)
    return code


def _timed(cls, name: str, into: list) -> None:
    original = getattr(cls, name)

    def timed(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            into.append(time.perf_counter() - started)
    setattr(cls, name, timed)


def tf_worker(out: str, files: str, epochs: int, count: bool, autotune: bool, seed: int = 42) -> None:
    """TensorFlow's own way: FILE auto-sharding by experimental_distribute_dataset, strategy.run of
    the model's train_step, one tf.function call per step, a new iterator each epoch (as fit)."""
    import keras
    import tensorflow as tf

    from bench import sharding_job
    from tests.ledger_job import DECODED
    tf.config.experimental.enable_op_determinism()  # (as the trainer, by default)
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    keras.utils.set_random_seed(seed)
    s = sharding_job.Settings(files=files, count_decodes=count, autotune=autotune)
    with strategy.scope():
        model = sharding_job.build_model(s)
        model.build((None, s.crop, s.crop, 3))
        model.optimizer.build(model.trainable_variables)
    dataset = sharding_job.pipeline(s, known_length=False)
    steps = int(sharding_job.pipeline(s).cardinality())
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.FILE
    distributed = strategy.experimental_distribute_dataset(dataset.with_options(options))

    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return strategy.experimental_local_results(logs["loss"])[0]

    began, ends, decoded = time.perf_counter(), [], []
    for _ in range(epochs):
        iterator = iter(distributed)
        for _ in range(steps):
            loss = step(iterator)
        float(loss)  # (the epoch's steps done)
        ends.append(time.perf_counter())
        decoded.append(DECODED[0])
    with open(out, "w") as fh:
        json.dump({"began": began, "epoch_end": ends, "decoded": decoded, "code": 0}, fh)


# -- starting them ----------------------------------------------------------------------------
def _ports(n: int) -> list[int]:
    sys.path.insert(0, ROOT)
    from tests.helpers import free_ports
    return free_ports(n)


def run_workers(n: int, args_of, timeout: float) -> list[dict]:
    """``n`` processes of this module (``args_of(index)``: their arguments), TF_CONFIG on
    127.0.0.1 when ``n`` > 1; each one's JSON result."""
    hosts = [f"127.0.0.1:{p}" for p in _ports(n)]
    outs = [tempfile.mktemp(suffix=f"-{i}.json") for i in range(n)]
    procs = []
    for i in range(n):
        env = dict(ENV)
        if n > 1:
            env["TF_CONFIG"] = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}})
        procs.append(subprocess.Popen([sys.executable, "-m", HERE, *args_of(i, outs[i])], cwd=ROOT, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        if p.returncode != 0:
            raise RuntimeError(f"a worker failed (exit {p.returncode}):\n{log[-4000:]}")
    results = []
    for out, log in zip(outs, logs):
        with open(out) as fh:
            results.append({**json.load(fh), "log": log})
        os.remove(out)
    return results


@dataclass(frozen=True)
class Plan:
    """What every run of the bench shares."""
    files: str          # the folder of TFRecord files
    shards_one: int     # --data-shards of the sharded 1-worker run
    epochs: int
    autotune: bool
    tmp: str


def trainer_args(plan: Plan, mode: str, workers: int, epochs: int, run_dir: str, counts: str | None) -> list[str]:
    args = ["train", "--job", JOB, "--files", plan.files, "--run-dir", run_dir, "--epochs", str(epochs),
            "--no-tensorboard", "--no-export", "--notices", "off", "--quiet"]
    if not plan.autotune:
        args.append("--no-autotune")
    if mode == "global":
        args += ["--data-shards", "0"]
    elif workers == 1:
        args += ["--data-shards", str(plan.shards_one)]
    if counts:
        args += ["--count-decodes", "--decoded-out", counts]
    return args


def tf_args(plan: Plan, epochs: int, count: bool):
    def args(index: int, out: str) -> list[str]:
        return ["--tf-worker", out, "--data", plan.files, "--epochs", str(epochs),
                *(["--count"] if count else []), *([] if plan.autotune else ["--no-autotune"])]
    return args


def timed_run(plan: Plan, mode: str, workers: int) -> dict:
    """One run of ``plan.epochs`` epochs: epoch times, and for the trainer its saves and checkpoint."""
    run_dir = os.path.join(plan.tmp, f"{mode}-{workers}")
    if mode == "tf-file":
        results = run_workers(workers, tf_args(plan, plan.epochs, False), timeout=1200)
    else:
        args = trainer_args(plan, mode, workers, plan.epochs, run_dir, None)
        results = run_workers(workers, lambda i, out: ["--trainer-worker", out, "--", *args], timeout=1200)
    chief = results[0]
    ends = [chief["began"], *chief["epoch_end"]]
    epoch_s = [b - a for a, b in itertools.pairwise(ends)]
    row = {"mode": mode, "workers": workers, "epoch_s": epoch_s,
           "steady_epoch_s": statistics.mean(epoch_s[1:]) if len(epoch_s) > 1 else epoch_s[0]}
    if mode != "tf-file":
        row["shards"] = _shards_line(chief["log"])
        row["save_s"] = [r["save_s"] for r in results]
        row["capture_s"] = [r["capture_s"] for r in results]
        row["stall_s"] = statistics.median(chief["save_s"][1:] or chief["save_s"])
        row["gather_s"] = statistics.median(chief["capture_s"][1:] or chief["capture_s"])
        row.update(checkpoint_size(os.path.join(run_dir, "checkpoints")))
    return row


def _shards_line(log: str) -> str:
    line = next((ln for ln in log.splitlines() if "logical shards" in ln or "read whole" in ln), "")
    return line.split("] ", 1)[-1].strip()


def checkpoint_size(folder: str) -> dict:
    """Bytes of the newest committed checkpoint's files, and of its iterator state."""
    import tensorflow as tf

    from trainer.checkpoint.index import committed
    newest = committed(os.listdir(folder))[0]
    size = sum(os.path.getsize(os.path.join(folder, n)) for n in os.listdir(folder)
               if n.startswith(f"ckpt-{newest}.") and not n.endswith(".json"))
    reader = tf.train.load_checkpoint(os.path.join(folder, f"ckpt-{newest}"))
    key = next(k for k in reader.get_variable_to_shape_map() if k.startswith("data/iterator"))
    return {"checkpoint_bytes": size, "iterator_bytes": len(reader.get_tensor(key))}


def count_run(plan: Plan, mode: str, workers: int) -> list[int]:
    """Records each worker decodes in one epoch (a run of one epoch with the counting pipeline)."""
    if mode == "tf-file":
        results = run_workers(workers, tf_args(plan, 1, True), timeout=1200)
        return [r["decoded"][0] for r in results]
    counts = os.path.join(plan.tmp, f"decoded-{mode}-{workers}")
    args = trainer_args(plan, mode, workers, 1, os.path.join(plan.tmp, f"count-{mode}-{workers}"), counts)
    run_workers(workers, lambda i, out: ["--trainer-worker", out, "--", *args], timeout=1200)
    return [int(open(f"{counts}-{i}").read()) for i in range(workers)]


# -- the report -------------------------------------------------------------------------------
def default_shards(files: int, batch: int, workers: list[int]) -> int:
    """The logical shards the trainer picks by default for every worker count given (its choice for
    their least common multiple)."""
    from trainer.data.shard_plan import Split, choose_count
    return choose_count(None, Split(batch=batch, files=files), math.lcm(*workers))


def table(rows: list[dict], records: int) -> str:
    reference = {r["workers"]: r for r in rows if r["mode"] == "tf-file"}
    lines = []
    for r in rows:
        ref = reference.get(r["workers"])
        decoded = r.get("decoded")
        per_worker = statistics.mean(decoded) if decoded else None
        work = (f"{per_worker / statistics.mean(ref['decoded']):.2f}" if per_worker and ref and ref.get("decoded")
                else "-")
        speed = f"{r['steady_epoch_s'] / ref['steady_epoch_s']:.2f}" if ref else "-"
        lines.append([
            r["mode"] + (f" ({r['shards_used']} shards)" if r.get("shards_used") else ""), r["workers"],
            f"{r['steady_epoch_s']:.2f}", f"{r['epoch_s'][0]:.1f}",
            " / ".join(str(d) for d in decoded) if decoded else "-",
            f"{per_worker / records:.3f}" if per_worker else "-", work, speed,
            f"{r['checkpoint_bytes'] / 1024:.0f} ({r['iterator_bytes'] / 1024:.0f})" if "checkpoint_bytes" in r
            else "-",
            f"{r['stall_s'] * 1000:.0f} ({r['gather_s'] * 1000:.0f})" if "stall_s" in r else "-"])
    return markdown_table(["reading", "workers", "epoch (s), steady", "first epoch (s)",
                           "records decoded per worker per epoch", "share of the data set", "input work / tf-file",
                           "epoch time / tf-file", "checkpoint KiB (iterator state)",
                           "save stall ms (gathering the state)"], lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("--workers", default="1,2,4", help="worker counts, comma-separated (default 1,2,4)")
    p.add_argument("--modes", default=",".join(MODES), help="of global, sharded, tf-file (default all)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of each timed run; the first is left out "
                                                         "of the steady-state time (default 3)")
    p.add_argument("--files", type=int, default=32, help="TFRecord files written (default 32)")
    p.add_argument("--records-per-file", type=int, default=64, help="PNG images per file (default 64)")
    p.add_argument("--image-size", type=int, default=64, help="side of the PNG images (default 64)")
    p.add_argument("--autotune", choices=("on", "off"), default="on",
                   help="tf.data autotuning of the job's pipeline (default on, as users have it; the trainer's "
                        "sharded reading turns it off in its shards whatever the job says)")
    p.add_argument("--no-counts", action="store_true", help="skip the one-epoch runs that count the decodes")
    p.add_argument("--out", default=None, help="Markdown report (default bench/results/sharding-<date>.md); "
                                               "the raw numbers go beside it as .json")
    p.add_argument("--trainer-worker", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--tf-worker", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--data", help=argparse.SUPPRESS)
    p.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--no-autotune", action="store_true", help=argparse.SUPPRESS)
    args, rest = p.parse_known_args()
    if args.trainer_worker:
        sys.exit(trainer_worker(args.trainer_worker, rest[1:] if rest[:1] == ["--"] else rest))
    if args.tf_worker:
        tf_worker(args.tf_worker, args.data, args.epochs, args.count, not args.no_autotune)
        return
    if rest:
        p.error(f"unrecognized arguments: {' '.join(rest)}")
    run(args)


def run(args) -> None:
    workers = [int(w) for w in args.workers.split(",")]
    modes = args.modes.split(",")
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SystemExit(f"--modes: unknown {sorted(unknown)}; expected some of {', '.join(MODES)}")
    tmp = tempfile.mkdtemp(prefix="bench-sharding-")
    try:
        measure(args, workers, modes, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # (the files and every run's checkpoints)


def measure(args, workers: list[int], modes: list[str], tmp: str) -> None:
    from bench import sharding_job
    files = os.path.join(tmp, "files")
    records = sharding_job.write_files(files, args.files, args.records_per_file, args.image_size)
    batch = sharding_job.Settings.batch_size
    shards_one = default_shards(args.files, batch, [w for w in workers if w > 1] or [1])
    plan = Plan(files, shards_one, args.epochs, args.autotune == "on", tmp)
    started, load = time.time(), os.getloadavg()
    rows = []
    for n in workers:
        for mode in modes:
            row = timed_run(plan, mode, n)
            if mode == "sharded":
                row["shards_used"] = shards_one if n == 1 else default_shards(args.files, batch, [n])
            if not args.no_counts:
                row["decoded"] = count_run(plan, mode, n)
            rows.append(row)
            print(f"{mode} x{n}: steady epoch {row['steady_epoch_s']:.2f} s, decoded {row.get('decoded')}",
                  file=sys.stderr, flush=True)
    took = time.time() - started
    out = args.out or os.path.join(ROOT, "bench", "results", f"sharding-{time.strftime('%Y-%m-%d')}.md")
    write_json(os.path.splitext(out)[0] + ".json", {"records": records, "rows": rows, "seconds": took})
    text = (f"{records} records ({args.files} TFRecord files of {args.records_per_file} PNG images "
            f"{args.image_size}x{args.image_size}), global batch {batch}, {args.epochs} epochs per timed run, "
            f"tf.data autotune {args.autotune}; "
            f"{os.cpu_count()} CPUs shared by all workers; load average at the start {load[0]:.1f}; "
            f"the bench took {took / 60:.1f} min.\n\n" + table(rows, records) + "\n")
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    with open(out, "w") as fh:
        fh.write(text)
    print(text)
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
