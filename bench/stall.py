"""Training stall per checkpoint: what the loop waits for (snapshot) vs. a synchronous
save (TF write + commit, plus upload for a remote run dir), for the small and the
reference model; local and S3 (a moto server on 127.0.0.1 started here).

    python bench/stall.py [--saves 5] [--presets small,reference]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from trainer.checkpoints import CheckpointStore  # noqa: E402
from trainer.config import TrainConfig  # noqa: E402
from trainer.model import build_resnet, compile_model  # noqa: E402
from trainer.storage import Storage  # noqa: E402


def moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    import boto3
    for _ in range(100):
        try:
            boto3.client("s3", endpoint_url=url, aws_access_key_id="x", aws_secret_access_key="x",
                         region_name="us-east-1").create_bucket(Bucket="bench-bucket")
            return proc, url
        except Exception:  # not up yet
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


def measure(preset: str, storage: Storage, saves: int) -> dict:
    cfg = TrainConfig.from_preset("unused", preset)
    model = build_resnet(cfg.image_size, cfg.stages, cfg.filters, cfg.weight_decay)
    compile_model(model, cfg.lr, cfg.momentum)
    model.optimizer.build(model.trainable_variables)
    groups = {"model": {v.path: v for v in model.variables},
              "optimizer": {v.path: v for v in model.optimizer.variables},
              "trainer": {"state": tf.Variable("{}")}}
    local = tempfile.mkdtemp()
    store = CheckpointStore(groups, storage, storage.local_path("checkpoints") or os.path.join(local, "ck"), 3)
    for i in range(saves):
        store.save({"global_step": i})
        store.flush(120)  # measure each save alone
    store.close()
    blocked = statistics.median(store.stats.blocked_s)
    sync = statistics.median(store.stats.write_s) + (statistics.median(store.stats.upload_s)
                                                     if store.stats.upload_s else 0.0)
    size = sum(v.numpy().nbytes for g in groups.values() for v in g.values() if v.dtype != tf.string)
    return {"preset": preset, "where": "s3 (moto)" if storage.is_remote else "local", "saves": saves,
            "checkpoint_mb": round(size / 2**20, 2), "blocked_ms": round(blocked * 1000, 1),
            "sync_save_ms": round(sync * 1000, 1), "blocked_over_sync": round(blocked / sync, 3),
            "upload_ms": round(statistics.median(store.stats.upload_s) * 1000, 1) if store.stats.upload_s else None}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--saves", type=int, default=5)
    p.add_argument("--presets", default="small,reference")
    p.add_argument("--out", default="bench/results/stall.json")
    args = p.parse_args()
    proc, endpoint = moto()
    rows = []
    try:
        for preset in args.presets.split(","):
            rows.append(measure(preset, Storage(tempfile.mkdtemp()), args.saves))
            rows.append(measure(preset, Storage(f"s3://bench-bucket/{preset}", {
                "endpoint_url": endpoint, "key": "x", "secret": "x"}), args.saves))
    finally:
        proc.terminate()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as fh:
        json.dump(rows, fh, indent=1)
    print("| model | run dir | checkpoint MB | loop blocked (ms) | synchronous save (ms) | ratio | upload (ms) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['preset']} | {r['where']} | {r['checkpoint_mb']} | {r['blocked_ms']} | {r['sync_save_ms']} "
              f"| {r['blocked_over_sync']:.2f} | {r['upload_ms'] or '-'} |")


if __name__ == "__main__":
    main()
