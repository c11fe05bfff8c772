"""Running the real trainer CLI in subprocesses, and reading its checkpoints."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--preset", "tiny", "--train-size", "2048", "--val-size", "128", "--epochs", "3",
        "--no-tensorboard", "--save-every-steps", "40"]
TINY_STEPS = 64  # steps per epoch of TINY
DIGITS = ["--job", str(ROOT / "jobs" / "digits.py"), "--epochs", "3", "--no-tensorboard", "--save-every-steps", "20"]
DIGITS_STEPS = 47  # steps per epoch of DIGITS
# two workers of the user job (tests/user_job.py: 32 steps per epoch between them), saving every 10 steps
TWO_WORKERS = ["--job", str(ROOT / "tests" / "user_job.py"), "--no-tensorboard", "--save-every-steps", "10",
               "--plateau"]
TWO_WORKERS_STEPS = 32
STOP_LINE = re.compile(r"stopped at epoch (\d+) step (\d+)/(\d+) \(global step (\d+)\); checkpoint ckpt-(\d+)")


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


def wait_for_step(proc: subprocess.Popen, target: int, timeout=300) -> tuple[str, int | None]:
    """Read the output of a run started with ``--log-every-steps 1`` until it reports global step
    >= ``target``; (everything read, the step reached), or (output, None) if it ended first."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            return "".join(seen), None
        seen.append(line)
        if line.startswith("STEP "):
            step = json.loads(line[5:])["global_step"]
            if step >= target:
                return "".join(seen), step
    raise AssertionError(f"timeout waiting for global step {target}:\n{''.join(seen)[-3000:]}")


def interrupt_at_step(args, sig: int, target: int) -> tuple[int, str]:
    """Start training, send ``sig`` once it reports global step ``target`` (the stop lands at a
    later step boundary: how much later depends on the machine). (exit code, output); exit
    code 0 when the run finished before reaching ``target``."""
    proc = start([*args, "--log-every-steps", "1"])
    out, reached = wait_for_step(proc, target)
    sent = time.monotonic()
    if reached is not None:
        proc.send_signal(sig)
    rest, _ = proc.communicate(timeout=120)
    out += rest + f"\n[test] signal-to-exit {time.monotonic() - sent:.3f}s\n"
    return proc.returncode, out


def interrupt_randomly(run_dir, args, sig, rng, total_steps, interrupts=3, outputs=None):
    """Interrupt at random reported steps, then run to the end; returns the stops. Correct for
    every branch: a signal may land at an epoch end, or after the run already finished.
    ``outputs``, a list, receives the output of every start."""
    base = ["train", "--run-dir", str(run_dir), *args]
    stops, starts, finished = [], 0, False
    for target in sorted(rng.sample(range(1, total_steps), interrupts)):
        if stops:
            target = max(target, stops[-1][3] + 1)
        code, out = interrupt_at_step(base, sig, target)
        starts += 1
        if outputs is not None:
            outputs.append(out)
        if stops:  # every start resumes exactly where the previous one stopped
            e, s, n, g, _ = stops[-1]
            assert f"at epoch {e} step {s}/{n} (global step {g})" in out, out
        if code == 0:  # finished before the signal landed
            finished = True
            break
        assert code == 128 + sig, out
        stop = stop_of(out)
        assert stop[3] >= target and f"resume with: python -m trainer train --run-dir {run_dir}" in out
        status = json.loads(run(["status", str(run_dir), "--json"]).stdout)
        assert status["latest"]["global_step"] == stop[3]  # zero steps lost
        assert status["latest"]["reason"] in ("signal", "epoch end")
        stops.append(stop)
    final = run(base)
    starts += 1
    if outputs is not None:
        outputs.append(final.stdout + final.stderr)
    assert final.returncode == 0, final.stdout + final.stderr
    if finished:
        assert "training already complete" in final.stdout
    else:
        e, s, n, g, _ = stops[-1]
        assert f"at epoch {e} step {s}/{n} (global step {g})" in final.stderr
    history = json.loads((run_dir / "history.json").read_text())
    assert sum(e["kind"] == "resume" for e in history["events"]) == starts - 1
    return stops


def gated_stop(proc: subprocess.Popen, gate: "Gate", target: int, sig: int = signal.SIGTERM) -> str:
    """Let a run whose data waits at ``gate`` reach global step ``target``, send ``sig``, open the
    gate; all its output. The stop lands at step ``target``'s boundary or one step later."""
    gate.allow(target)
    out, reached = wait_for_step(proc, target)
    assert reached == target, out
    proc.send_signal(sig)
    gate.allow(10_000)
    out += proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + sig, out
    return out


def stop_of(out: str) -> tuple[int, ...]:
    """(epoch, step, steps, global step, checkpoint) of the trainer's stop line."""
    match = STOP_LINE.search(out)
    assert match, out
    return tuple(int(g) for g in match.groups())


def user_job(folder: Path) -> Path:
    """A copy of tests/user_job.py in ``folder`` (outside the repo), as a user would write it."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / "my_job.py"
    shutil.copy(ROOT / "tests" / "user_job.py", target)
    return target


class Gate:
    """How many batches the user job (``--gate FILE``) may produce; the test opens it step by step."""

    def __init__(self, path: Path):
        self.path = path
        self.allow(0)

    def allow(self, batches: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(str(batches))
        os.replace(tmp, self.path)


def latest_variables(run_dir) -> dict[str, np.ndarray]:
    """All model and optimizer tensors of the newest committed checkpoint."""
    import tensorflow as tf

    from trainer.checkpoint.index import committed
    ckpt_dir = Path(run_dir) / "checkpoints"
    newest = committed(os.listdir(ckpt_dir))[0]
    reader = tf.train.load_checkpoint(str(ckpt_dir / f"ckpt-{newest}"))
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()
            if k.startswith(("model/", "optimizer/"))}


def assert_checkpoint_complete(storage, number: int) -> None:
    """Every file that checkpoint ``number``'s manifest lists is there, with its size and CRC32."""
    import json
    import zlib

    from trainer.checkpoint.index import DIR, MARKER
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


def free_ports(n: int) -> list[int]:
    import socket
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def start_workers(args, n: int = 2) -> list[subprocess.Popen]:
    """``n`` trainer processes that find each other through TF_CONFIG on 127.0.0.1 (worker 0 is the chief)."""
    hosts = [f"127.0.0.1:{p}" for p in free_ports(n)]
    return [start_worker(args, hosts, index) for index in range(n)]


def start_worker(args, hosts: list[str], index: int) -> subprocess.Popen:
    """Worker ``index`` of the cluster ``hosts`` (TF_CONFIG), alone: its peers are up to the caller."""
    config = json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})
    return subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=ROOT, env={**env(), "TF_CONFIG": config},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(procs, timeout=300) -> list[tuple[int, str]]:
    """Wait for every process; [(exit code, output)]."""
    outputs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [(p.returncode, out) for p, out in zip(procs, outputs)]
