"""Training stall per checkpoint: what the loop waits for (snapshot) vs. a synchronous
save (TF write + commit, plus upload for a remote run dir), for the small and the
reference model; local and S3 (a moto server on 127.0.0.1 started here).

    python -m bench.stall [--saves 5] [--presets small,reference]
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from bench.common import (  # noqa: E402
    BUCKET,
    build_job,  # noqa: E402
    markdown_table,
    moto,
    write_json,
)
from trainer.checkpoint.store import CheckpointStore  # noqa: E402
from trainer.storage import Storage, open_storage  # noqa: E402


def measure(preset: str, storage: Storage, saves: int) -> dict:
    groups = build_job(None, preset).groups
    local = storage.local_path("checkpoints") or tempfile.mkdtemp()
    store = CheckpointStore(groups, storage, local, 3)
    try:
        for i in range(saves + 1):
            store.save({"global_step": i})
            store.flush(120)  # measure each save alone
    finally:
        store.close()
    blocked, write = store.stats.blocked_s[1:], store.stats.write_s[1:]  # the first one traces the snapshot
    upload = store.stats.upload_s[1:]
    sync = statistics.median(write) + (statistics.median(upload) if upload else 0.0)
    size = sum(v.numpy().nbytes for g in groups.values() for v in g.values() if v.dtype != tf.string)
    return {"preset": preset, "where": "local" if storage.local_path("") else "S3 (moto)", "saves": saves,
            "checkpoint_mb": round(size / 2**20, 2), "blocked_ms": round(statistics.median(blocked) * 1000, 1),
            "sync_save_ms": round(sync * 1000, 1), "blocked_over_sync": round(statistics.median(blocked) / sync, 3),
            "upload_ms": round(statistics.median(upload) * 1000, 1) if upload else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=5)
    p.add_argument("--presets", default="small,reference")
    p.add_argument("--out", default="bench/results/stall.json")
    args = p.parse_args()
    server, s3 = moto()
    rows = []
    try:
        for preset in args.presets.split(","):
            rows.append(measure(preset, open_storage(tempfile.mkdtemp()), args.saves))
            rows.append(measure(preset, open_storage(f"s3://{BUCKET}/{preset}", s3), args.saves))
    finally:
        server.terminate()
    write_json(args.out, rows)
    print(f"median over {args.saves} saves each\n")
    print(markdown_table(
        ["model", "run dir", "checkpoint MB", "loop blocked (ms)", "synchronous save (ms)", "ratio", "upload (ms)"],
        [[r["preset"], r["where"], r["checkpoint_mb"], r["blocked_ms"], r["sync_save_ms"],
          f"{r['blocked_over_sync']:.3f}", r["upload_ms"] or "-"] for r in rows]))


if __name__ == "__main__":
    main()
