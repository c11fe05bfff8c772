"""A streaming tf.data pipeline (jobs/fashion_mnist_files.py: 16 TFRecord shards, interleave,
shuffle buffer of 10,000 examples, parallel decode): resume at several positions of an epoch
by restoring the checkpointed iterator vs by skipping the batches already trained on; checkpoint
size and save stall with and without the iterator state.

    python -m bench.streaming [--files data/fmnist-files] [--positions 0.1,0.5,0.9]

Prepares the files first (all 60,000 images) if the folder has none.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


from bench.common import ENV, ROOT, build_job, markdown_table, write_json  # noqa: E402
from trainer.checkpoint.store import CheckpointStore  # noqa: E402
from trainer.storage import open_storage  # noqa: E402

JOB = os.path.join(ROOT, "jobs", "fashion_mnist_files.py")


def ensure_files(folder: str) -> None:
    if not os.path.exists(os.path.join(folder, "test-labels.npy")):
        subprocess.run([sys.executable, JOB, "prepare", "--out", folder], cwd=ROOT, env=ENV, check=True)


def first_batch_s(make_iterator) -> float:
    """Seconds until the first batch is out of a new iterator (what a resume waits for)."""
    started = time.perf_counter()
    next(make_iterator())
    return time.perf_counter() - started


def resume_at(data, step: int) -> dict:
    """Resume cost at ``step`` of the first epoch: restore the saved iterator vs skip ``step`` batches."""
    data.state.assign("")
    data._iterator = None
    data.iterator(0, 0)
    for _ in range(step):
        next(data._iterator)
    data.capture()
    saved = data.state.numpy()
    data._iterator = None

    def restored():
        data.state.assign(saved)
        data._iterator = None
        return data.iterator(0, step)
    restore_s = first_batch_s(restored)
    skip_s = first_batch_s(lambda: iter(data.dataset(0, 0, step)))
    data._iterator = None
    return {"step": step, "restore_s": round(restore_s, 3), "skip_s": round(skip_s, 3),
            "skip_over_restore": round(skip_s / restore_s, 1), "state_mb": round(len(saved) / 2**20, 2)}


def save_stall(built, saves: int, with_iterator: bool) -> dict:
    """Median training stall per save and the committed checkpoint's size on disk."""
    data = built.train
    groups = dict(built.groups) if with_iterator else {k: v for k, v in built.groups.items() if k != "data"}
    folder = tempfile.mkdtemp()
    store = CheckpointStore(groups, open_storage(folder), os.path.join(folder, "checkpoints"), 3)
    stalls = []
    try:
        for _ in range(saves + 1):
            for _ in range(5):
                next(data._iterator)
            started = time.perf_counter()
            if with_iterator:
                data.capture()
            store.save({})
            stalls.append(time.perf_counter() - started)
            store.flush(120)  # each save alone
    finally:
        store.close()
    ckpt = os.path.join(folder, "checkpoints")
    number = store.last_number
    size = sum(os.path.getsize(os.path.join(ckpt, n)) for n in os.listdir(ckpt)
               if n.startswith(f"ckpt-{number}.") and not n.endswith(".json"))
    return {"iterator_state": with_iterator, "save_stall_ms": round(statistics.median(stalls[1:]) * 1000, 1),
            "checkpoint_mb": round(size / 2**20, 2)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", default=os.path.join(ROOT, "data", "fmnist-files"))
    parser.add_argument("--positions", default="0.1,0.5,0.9", help="fractions of the epoch to resume at")
    parser.add_argument("--saves", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "streaming.json"))
    args = parser.parse_args(argv)
    ensure_files(args.files)
    built = build_job(JOB, None, files=args.files)
    data = built.train
    steps = data.steps_per_epoch
    resumes = [resume_at(data, int(float(p) * steps)) for p in args.positions.split(",")]
    data.iterator(0, 0)
    saves = [save_stall(built, args.saves, flag) for flag in (False, True)]
    write_json(args.out, {"steps_per_epoch": steps, "resumes": resumes, "saves": saves})
    print(f"Resume within an epoch of {steps} steps (batch 128, shuffle buffer 10,000, 16 TFRecord shards):\n")
    print(markdown_table(["step", "iterator restore (s)", "skipping (s)", "ratio", "iterator state (MB)"],
                         [[r["step"], r["restore_s"], r["skip_s"], r["skip_over_restore"], r["state_mb"]]
                          for r in resumes]))
    print("\nCheckpoint size and save stall (median of the saves):\n")
    print(markdown_table(["iterator state", "checkpoint (MB)", "save stall (ms)"],
                         [["with" if s["iterator_state"] else "without", s["checkpoint_mb"], s["save_stall_ms"]]
                          for s in saves]))


if __name__ == "__main__":
    main()
