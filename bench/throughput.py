"""Throughput of our training loop vs. plain ``model.fit`` on the same model and the same
tf.data pipeline, interleaved round by round in one process so the ratios are stable on
a noisy machine. Also: ours with a checkpoint every 50 steps (local, and S3 on a moto
server on 127.0.0.1) and ``model.fit`` with Keras's BackupAndRestore(save_freq=50).

    python -m bench.throughput [--jobs small,digits] [--steps 150] [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bench.common import BUCKET, build_job, markdown_table, moto, write_json  # noqa: E402
from trainer.checkpoint.store import CheckpointStore  # noqa: E402
from trainer.storage import open_storage  # noqa: E402
from trainer.training.loop import Loop  # noqa: E402
from trainer.training.progress import Progress  # noqa: E402
from trainer.training.saver import CheckpointContents, Saver, SaveSchedule  # noqa: E402
from trainer.training.state import TrainerState  # noqa: E402

JOBS = {"small": (None, "small"), "digits": ("jobs/digits.py", None)}


class FirstSteps:
    """The first ``steps`` batches of each epoch of ``source`` (a timed run is one 'epoch')."""

    def __init__(self, source, steps: int):
        self.source, self.steps_per_epoch, self.warning = source, min(steps, source.steps_per_epoch), None

    def dataset(self, *args, **kwargs):
        return self.source.dataset(*args, **kwargs).take(self.steps_per_epoch)


def our_loop(built, data, store: CheckpointStore | None = None, save_every: int | None = None):
    """Our loop on ``data`` (its tf.functions traced once, as in a real run); each call of the
    returned function trains one more epoch. The epoch end always saves (to a temporary folder
    unless ``store`` is given)."""
    if store is None:
        tmp = tempfile.mkdtemp()
        store = CheckpointStore(built.groups, open_storage(tmp), os.path.join(tmp, "checkpoints"), 3)
    steps = data.steps_per_epoch
    state = TrainerState(epoch=0)
    saver = Saver(state, store, CheckpointContents(built.state_var, built.model.optimizer), SaveSchedule(save_every))
    quiet = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the bench
    loop = Loop(model=built.model, train=data, epochs=0, state=state, saver=saver,
                progress=Progress(state, steps, 1, True, stream=quiet))

    def run(epoch):
        loop.epochs = state.epoch + 1
        loop.run()
    return run


def measure(name: str, steps: int, rounds: int, save_every: int, s3: dict) -> list[dict]:
    job, preset = JOBS[name]
    built = build_job(job, preset)
    model, data = built.model, FirstSteps(built.train, steps)
    steps = data.steps_per_epoch
    tmp = tempfile.mkdtemp()
    stores = {"local": CheckpointStore(built.groups, open_storage(tmp), os.path.join(tmp, "checkpoints"), 3),
              "S3": CheckpointStore(built.groups, open_storage(f"s3://{BUCKET}/{name}", s3), os.path.join(tmp, "s3"), 3)}

    def ours(where=None):
        return our_loop(built, data, stores[where or "local"], save_every if where else None)

    def fit(callbacks):
        def run(epoch):
            model.fit(data.dataset(0, epoch, 0), verbose=0, callbacks=callbacks(), shuffle=False)
        return run

    variants = {"model.fit": fit(list), "ours": ours(),
                f"ours, save every {save_every} (local)": ours("local"),
                f"ours, save every {save_every} (S3)": ours("S3"),
                f"model.fit + BackupAndRestore({save_every})":
                    fit(lambda: [keras.callbacks.BackupAndRestore(tempfile.mkdtemp(), save_freq=save_every)])}
    times = {k: [] for k in variants}
    epoch = 1000
    for run in variants.values():  # trace every function once, outside the timed runs
        epoch += 1
        run(epoch)
    for store in stores.values():
        store.flush(120)
    for _ in range(rounds):
        for variant, run in variants.items():
            epoch += 1
            started = time.perf_counter()
            run(epoch)
            times[variant].append(time.perf_counter() - started)
    for store in stores.values():
        store.flush(120)
        store.close()
    batch = getattr(built.train, "batch_size", None)
    base = min(times["model.fit"])
    return [{"job": name, "variant": variant, "steps": steps, "batch": batch,
             "examples_per_s": round(steps * batch / min(ts), 1) if batch else None,
             "ratio_vs_fit": round(base / min(ts), 4), "runs_s": [round(t, 3) for t in ts]}
            for variant, ts in times.items()]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="small,digits")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--out", default="bench/results/throughput.json")
    args = p.parse_args()
    server, s3 = moto()
    try:
        rows = [r for name in args.jobs.split(",") for r in measure(name, args.steps, args.rounds, args.save_every, s3)]
    finally:
        server.terminate()
    write_json(args.out, rows)
    print(f"{args.steps} steps per timed run, best of {args.rounds} interleaved rounds\n")
    print(markdown_table(["job", "variant", "examples/s", "vs model.fit"],
                         [[r["job"], r["variant"], r["examples_per_s"], f"{r['ratio_vs_fit']:.3f}"] for r in rows]))


if __name__ == "__main__":
    main()
