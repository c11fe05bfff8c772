"""Running the real trainer CLI in subprocesses, and reading its checkpoints."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--train-size", "2048", "--val-size", "128", "--epochs", "3",
        "--no-tensorboard", "--save-every-steps", "40"]


def env() -> dict:
    e = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    return e


def run(args, timeout=300, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env(),
                          capture_output=True, text=True, timeout=timeout, **kw)


def start(args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, needle: str, timeout=120) -> str:
    """Read the process's output until a line contains ``needle``; return everything read."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"process ended before {needle!r}:\n{''.join(seen)}")
        seen.append(line)
        if needle in line:
            return "".join(seen)
    raise AssertionError(f"timeout waiting for {needle!r}")


def interrupt_run(args, sig: int, rng: random.Random, epochs: int) -> tuple[int, str]:
    """Start training, signal it at a random moment inside a random epoch, return (code, output)."""
    proc = start(args)
    out = wait_for(proc, f"Epoch {rng.randint(1, epochs)}/")
    time.sleep(rng.uniform(0.05, 0.8))
    sent = time.monotonic()
    proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    out += rest
    out += f"\n[test] signal-to-exit {time.monotonic() - sent:.3f}s\n"
    return proc.returncode, out


def latest_variables(run_dir) -> dict[str, np.ndarray]:
    """All model and optimizer tensors of the newest committed checkpoint."""
    import tensorflow as tf

    from trainer.checkpoints_index import committed
    ckpt_dir = Path(run_dir) / "checkpoints"
    newest = committed(os.listdir(ckpt_dir))[0]
    reader = tf.train.load_checkpoint(str(ckpt_dir / f"ckpt-{newest}"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/"))}


def assert_checkpoint_complete(storage, number: int) -> None:
    """Every file that checkpoint ``number``'s manifest lists is there, with its size and CRC32."""
    import json
    import zlib

    from trainer.checkpoints_index import DIR, MARKER
    manifest = json.loads(storage.read_text(f"{DIR}/ckpt-{number}{MARKER}"))
    for name, info in manifest["files"].items():
        data = storage.read_bytes(f"{DIR}/{name}")
        assert len(data) == info["size"] and zlib.crc32(data) == info["crc32"], f"ckpt-{number}: {name}"


def assert_bitwise_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].dtype == b[key].dtype, key
        assert a[key].tobytes() == b[key].tobytes(), f"{key} differs"


SIGNALS = {"TERM": signal.SIGTERM, "INT": signal.SIGINT}
