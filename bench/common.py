"""What the bench scripts share: the trainer's subprocess environment, a moto S3
server on 127.0.0.1, and writing results (JSON for machines, Markdown for people)."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONUNBUFFERED="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT,
           TRAINER_LOG_FORMAT="json")  # the benches read the STEP/EPOCH lines
BUCKET = "bench-bucket"


def trainer_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "trainer", *args]


def moto() -> tuple[subprocess.Popen, dict]:
    """Start a moto S3 server with an empty ``BUCKET``; (process, storage options)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([shutil.which("moto_server") or "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    options = {"endpoint_url": f"http://127.0.0.1:{port}", "key": "x", "secret": "x"}
    import boto3
    client = boto3.client("s3", endpoint_url=options["endpoint_url"], aws_access_key_id="x",
                          aws_secret_access_key="x", region_name="us-east-1")
    for _ in range(150):
        try:
            client.create_bucket(Bucket=BUCKET)
            return proc, options
        except Exception:  # not up yet
            time.sleep(0.2)
    proc.terminate()
    raise RuntimeError("moto server did not start within 30 s")


def write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as fh:
        json.dump(obj, fh, indent=1)


def markdown_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def build_job(job: str | None, preset: str | None = None, **settings):
    """A job's model and data as the trainer builds them (``trainer.building.build``), default strategy."""
    from trainer.building import build
    from trainer.cluster import distribute
    from trainer.config import TrainConfig
    from trainer.job import load
    loaded = load(job)
    loaded.choose(preset, settings)
    return build(loaded, TrainConfig("unused"), distribute.setup("default"))
