"""Throughput of model.fit: plain (no checkpoints) vs. our checkpoint callback with a
local and an S3 run directory (moto on 127.0.0.1) vs. Keras's BackupAndRestore,
interleaved round by round in one process so the ratios are stable on a noisy machine.

    python -m bench.throughput [--preset small] [--steps 100] [--rounds 3] [--save-every 50]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from bench.common import BUCKET, markdown_table, moto, write_json  # noqa: E402
from trainer import data, pipeline  # noqa: E402
from trainer.callback import ResumableCheckpoint  # noqa: E402
from trainer.checkpoints import CheckpointStore  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.model import build_for_training  # noqa: E402
from trainer.signals import StopRequest  # noqa: E402
from trainer.state import TrainerState  # noqa: E402
from trainer.storage import Storage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--out", default="bench/results/throughput.json")
    args = p.parse_args()
    cfg = TrainConfig.from_preset("unused", args.preset)
    ds = data.load()
    x, y = ds.x_train[: cfg.train_size], ds.y_train[: cfg.train_size]
    built = build_for_training(cfg)
    model = built.model
    steps = pipeline.steps_per_epoch(len(x), cfg.batch_size)
    server, s3 = moto()
    tmp = tempfile.mkdtemp()
    stores = {"local": CheckpointStore(built.groups, Storage(tmp), os.path.join(tmp, "checkpoints"), 3),
              "S3": CheckpointStore(built.groups, Storage(f"s3://{BUCKET}/throughput", s3),
                                    os.path.join(tmp, "staging"), 3)}

    def ours(where):
        def make():
            return [ResumableCheckpoint(TrainerState(lr=cfg.lr), built.state, stores[where], StopRequest(),
                                        steps, save_every_steps=args.save_every)]
        return make

    n = args.save_every
    variants = {"plain fit": lambda: [],
                f"ours (save every {n} steps, local)": ours("local"),
                f"ours (save every {n} steps, S3)": ours("S3"),
                f"keras BackupAndRestore(save_freq={n})":
                    lambda: [keras.callbacks.BackupAndRestore(tempfile.mkdtemp(), save_freq=n)]}
    times = {k: [] for k in variants}
    try:
        for store in stores.values():  # trace the snapshot function once, outside the timed runs
            store.save({"warm_up": True})
            store.flush(120)
        model.fit(pipeline.train_dataset(x, y, seed=0, epoch=99, start_step=steps - 5, batch_size=cfg.batch_size,
                                         image_size=cfg.image_size, augment=True), verbose=0)  # trace once
        epoch = 0
        for _ in range(args.rounds):
            for name, make in variants.items():
                epoch += 1
                train = pipeline.train_dataset(x, y, seed=0, epoch=epoch, start_step=0, batch_size=cfg.batch_size,
                                               image_size=cfg.image_size, augment=True).take(args.steps)
                callbacks = make()
                start = time.perf_counter()
                model.fit(train, verbose=0, callbacks=callbacks, shuffle=False)
                times[name].append(time.perf_counter() - start)
        for store in stores.values():
            store.flush(120)
    finally:
        for store in stores.values():
            store.close()
        server.terminate()
    images = args.steps * cfg.batch_size
    base = images / min(times["plain fit"])
    rows = [{"variant": name, "images_per_s": round(images / min(ts), 1),
             "ratio_vs_plain": round(images / min(ts) / base, 4), "runs_s": [round(t, 3) for t in ts]}
            for name, ts in times.items()]
    stalls = {w: [round(s, 4) for s in st.stats.blocked_s] for w, st in stores.items()}
    write_json(args.out, {"preset": args.preset, "steps": args.steps, "rounds": args.rounds,
                          "save_every": n, "save_stall_s": stalls, "rows": rows})
    print(f"{args.preset} preset, {args.steps} steps of {cfg.batch_size} images per run, best of "
          f"{args.rounds} interleaved rounds\n")
    print(markdown_table(["variant", "images/s", "vs plain"],
                         [[r["variant"], r["images_per_s"], f"{r['ratio_vs_plain']:.3f}"] for r in rows]))
    for where, s in stalls.items():
        if s:
            print(f"\nour loop blocked per checkpoint ({where}): median {statistics.median(s) * 1000:.1f} ms "
                  f"over {len(s)} saves")


if __name__ == "__main__":
    main()
