"""``compile(steps_per_execution=N)``: our loop vs plain ``model.fit`` at N = 1 and N = 32, on
the same model and the same tf.data pipeline, interleaved round by round in one process (the
order of the variants rotates every round) so the ratios hold on a shared, noisy machine.

Jobs: ``mlp`` (a 3-layer MLP, 625 steps of 32 examples: host overhead dominates),
``digits`` (jobs/digits.py, its epoch repeated to ``--steps``) and ``small`` (the reference
job's small preset, whose steps are compute-bound: ``--small-steps``).

    python -m bench.steps_per_execution [--jobs mlp,digits,small] [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import trainer  # noqa: E402
from bench.common import build_job, markdown_table, write_json  # noqa: E402
from bench.throughput import FirstSteps, our_loop  # noqa: E402

EXECUTIONS = (1, 32)


class Repeated(FirstSteps):
    """``steps`` batches per timed run: the first epoch's batches, repeated if it has fewer."""

    def __init__(self, source, steps: int):
        super().__init__(source, steps)
        self.steps_per_epoch = steps

    def dataset(self, *args, **kwargs):
        return self.source.dataset(*args, **kwargs).repeat().take(self.steps_per_epoch)


def mlp_job(steps: int):
    """The shape of the issue's example: 3 Dense layers on 32 features, batch 32."""
    def build(_settings):
        model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(64, activation="relu"),
                                  keras.layers.Dense(64, activation="relu"), keras.layers.Dense(10, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    rng = np.random.default_rng(0)
    x = rng.normal(size=(steps * 32, 32)).astype(np.float32)
    y = rng.integers(0, 10, size=steps * 32).astype(np.int32)
    return build, trainer.ArrayData(x, y, batch_size=32)


def build(name: str, steps: int):
    if name == "mlp":
        from trainer.building import build as build_loaded
        from trainer.cluster import distribute
        from trainer.config import TrainConfig
        from trainer.job import from_callables
        model, data = mlp_job(steps)
        return build_loaded(from_callables(model, data), TrainConfig("unused"), distribute.setup("default"))
    return build_job("jobs/digits.py" if name == "digits" else None, None if name == "digits" else "small")


def fit_runner(model, data, n: int):
    """``model.fit`` with ``steps_per_execution=n`` (its train function made once per n)."""
    made = None

    def run(epoch):
        nonlocal made
        model.steps_per_execution, model.train_function = n, made
        model.fit(data.dataset(0, epoch, 0), verbose=0, shuffle=False)
        made = model.train_function
    return run


def measure(name: str, steps: int, rounds: int) -> list[dict]:
    built = build(name, steps)
    model, data = built.model, Repeated(built.train, steps)
    variants = {}
    for n in EXECUTIONS:
        variants[("model.fit", n)] = fit_runner(model, data, n)
        model.steps_per_execution = n  # (our loop reads it when it is made)
        variants[("ours", n)] = our_loop(built, data)
    times = {k: [] for k in variants}
    epoch = 1000
    for run in variants.values():  # trace every function once, outside the timed runs
        epoch += 1
        run(epoch)
    order = list(variants)
    for r in range(rounds):
        for key in order[r % len(order):] + order[:r % len(order)]:
            epoch += 1
            started = time.perf_counter()
            variants[key](epoch)
            times[key].append(time.perf_counter() - started)
    best = {k: min(ts) for k, ts in times.items()}
    return [{"job": name, "steps": data.steps_per_epoch, "steps_per_execution": n,
             "fit_s": round(best[("model.fit", n)], 4), "ours_s": round(best[("ours", n)], 4),
             "ratio_vs_fit": round(best[("model.fit", n)] / best[("ours", n)], 4),
             "paired_median": round(float(np.median(np.divide(times[("model.fit", n)], times[("ours", n)]))), 4),
             "runs_s": {f"{who} N={k}": [round(t, 3) for t in times[(who, k)]] for who, k in times if k == n}}
            for n in EXECUTIONS]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="mlp,digits,small")
    p.add_argument("--steps", type=int, default=625, help="steps per timed run (mlp, digits)")
    p.add_argument("--small-steps", type=int, default=40, help="steps per timed run of the small preset")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--out", default="bench/results/steps_per_execution.json")
    args = p.parse_args()
    rows = [r for name in args.jobs.split(",")
            for r in measure(name, args.small_steps if name == "small" else args.steps, args.rounds)]
    write_json(args.out, rows)
    print(f"best of {args.rounds} interleaved rounds, seconds per timed run (one epoch of `steps` steps); "
          "'paired': the median over rounds of fit's time / ours in the same round\n")
    print(markdown_table(["job", "steps", "steps_per_execution", "model.fit s", "ours s", "ours vs fit (best)",
                          "ours vs fit (paired)"],
                         [[r["job"], r["steps"], r["steps_per_execution"], r["fit_s"], r["ours_s"],
                           f"{r['ratio_vs_fit']:.3f}x", f"{r['paired_median']:.3f}x"] for r in rows]))


if __name__ == "__main__":
    main()
