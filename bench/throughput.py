"""Throughput of model.fit: plain (no checkpoints) vs. with our checkpoint callback
vs. Keras's BackupAndRestore, interleaved in one process so the ratios are stable.

    python bench/throughput.py [--preset small] [--steps 60] [--rounds 3] [--save-every 50]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from trainer import data, pipeline  # noqa: E402
from trainer.callback import ResumableCheckpoint  # noqa: E402
from trainer.checkpoints import CheckpointStore  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.model import build_resnet, compile_model  # noqa: E402
from trainer.signals import StopRequest  # noqa: E402
from trainer.state import TrainerState  # noqa: E402
from trainer.storage import Storage  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--save-every", type=int, default=50)
    p.add_argument("--out", default="bench/results/throughput.json")
    args = p.parse_args()
    cfg = TrainConfig.from_preset("unused", args.preset)
    ds = data.load()
    x, y = ds.x_train[: cfg.train_size], ds.y_train[: cfg.train_size]
    model = build_resnet(cfg.image_size, cfg.stages, cfg.filters, cfg.weight_decay)
    compile_model(model, cfg.lr, cfg.momentum)
    batch = next(iter(pipeline.train_dataset(x[:cfg.batch_size], y[:cfg.batch_size], seed=0, epoch=0, start_step=0,
                                             batch_size=cfg.batch_size, image_size=cfg.image_size, augment=False)))
    model._symbolic_build(data_batch=batch)  # noqa: SLF001
    model.optimizer.build(model.trainable_variables)

    tmp = tempfile.mkdtemp()
    state_var = tf.Variable("", dtype=tf.string)
    groups = {"model": {v.path: v for v in model.variables},
              "optimizer": {v.path: v for v in model.optimizer.variables}, "trainer": {"state": state_var}}
    store = CheckpointStore(groups, Storage(tmp), os.path.join(tmp, "checkpoints"), 3)
    steps = pipeline.steps_per_epoch(len(x), cfg.batch_size)

    def ours():
        state = TrainerState(lr=cfg.lr)
        cb = ResumableCheckpoint(state, state_var, store, StopRequest(), steps, save_every_steps=args.save_every)
        return [cb]

    variants = {
        "plain fit": lambda: [],
        f"ours (save every {args.save_every} steps, local)": ours,
        f"keras BackupAndRestore(save_freq={args.save_every})":
            lambda: [keras.callbacks.BackupAndRestore(tempfile.mkdtemp(), save_freq=args.save_every)],
    }
    times = {k: [] for k in variants}
    epoch = 0
    model.fit(pipeline.train_dataset(x, y, seed=0, epoch=99, start_step=steps - 5, batch_size=cfg.batch_size,
                                     image_size=cfg.image_size, augment=True), verbose=0)  # warm-up/trace
    for _ in range(args.rounds):
        for name, make in variants.items():
            epoch += 1
            train = pipeline.train_dataset(x, y, seed=0, epoch=epoch, start_step=0, batch_size=cfg.batch_size,
                                           image_size=cfg.image_size, augment=True).take(args.steps)
            callbacks = make()
            start = time.perf_counter()
            model.fit(train, verbose=0, callbacks=callbacks, shuffle=False)
            times[name].append(time.perf_counter() - start)
    images = args.steps * cfg.batch_size
    base = images / min(times["plain fit"])
    rows = []
    for name, ts in times.items():
        rate = images / min(ts)
        rows.append({"variant": name, "images_per_s": round(rate, 1), "ratio_vs_plain": round(rate / base, 4),
                     "runs_s": [round(t, 3) for t in ts]})
    result = {"preset": args.preset, "steps": args.steps, "rounds": args.rounds,
              "save_stall_s": [round(s, 4) for s in store.stats.blocked_s], "rows": rows}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print("| variant | images/s | vs plain |\n|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['images_per_s']} | {r['ratio_vs_plain']:.3f} |")
    stalls = sorted(store.stats.blocked_s)
    if stalls:
        print(f"\nour save stall per checkpoint: median {stalls[len(stalls) // 2] * 1000:.1f} ms over {len(stalls)} saves")


if __name__ == "__main__":
    main()
