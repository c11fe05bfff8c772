"""Multi-worker costs on this machine (workers on 127.0.0.1 via TF_CONFIG):

* per-step cost of the stop agreement: the same two-worker loop with and without the
  fused 34-float all-reduce, interleaved;
* a checkpoint's stall with two workers vs one (the snapshot is collective);
* throughput of two workers vs one (on a 2-core machine no speed-up is expected);
* time from a SIGTERM on one worker until both have exited, and for the survivor
  to exit after its peer's SIGKILL (goal: 60 s).

    python -m bench.multiworker [--preset small] [--steps 60] [--rounds 3]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from bench.common import ENV, ROOT, markdown_table, write_json

HERE = "bench.multiworker"


def _cluster_env(index: int, ports: list[int]) -> dict:
    hosts = [f"127.0.0.1:{p}" for p in ports]
    return {**ENV, "TF_CONFIG": json.dumps({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": index}})}


def _ports(n: int) -> list[int]:
    sys.path.insert(0, ROOT)
    from tests.helpers import free_ports
    return free_ports(n)


def worker(preset: str, steps: int, rounds: int, out: str) -> None:
    """One worker: time ``steps`` steps with and without the agreement, and saves."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from bench.throughput import FirstSteps
    from trainer.checkpoint.store import CheckpointStore
    from trainer.cluster import distribute
    from trainer.cluster.distribute import Agreement
    from trainer.storage import open_storage
    from trainer.training.loop import Loop
    from trainer.training.progress import Progress
    from trainer.training.saver import CheckpointContents, Saver
    from trainer.training.state import TrainerState

    cluster = distribute.setup("auto")
    from trainer.building import build
    from trainer.config import TrainConfig
    from trainer.job import load
    job = load(None)
    job.choose(preset, {})
    built = build(job, TrainConfig("unused"), cluster)
    data = FirstSteps(built.train, steps)
    tmp = tempfile.mkdtemp()
    store = CheckpointStore(built.groups, open_storage(tmp), os.path.join(tmp, "checkpoints"), 3,
                            writes=cluster.is_chief)
    quiet = open(os.devnull, "w")  # noqa: SIM115

    def make(agreement):
        """One loop per kind (traced once, as in a real run); each call trains one more epoch."""
        state = TrainerState()
        saver = Saver(state, store, CheckpointContents(built.state_var, built.model.optimizer))
        loop = Loop(model=built.model, strategy=cluster.strategy, replicas=cluster.replicas, train=data, epochs=0,
                    state=state, saver=saver, agreement=agreement,
                    progress=Progress(state, data.steps_per_epoch, 1, True, stream=quiet))

        def run():
            loop.epochs = state.epoch + 1
            started = time.perf_counter()
            loop.run()
            return (time.perf_counter() - started) / data.steps_per_epoch
        return run

    kinds = {"with agreement": make(cluster.agreement), "without": make(Agreement())} if cluster.workers > 1 else \
        {"without": make(cluster.agreement)}
    times = {k: [] for k in kinds}
    for run in kinds.values():  # trace once
        run()
    for _ in range(rounds):
        for name, run in kinds.items():
            times[name].append(run())
    agreements = []
    if cluster.workers > 1:
        from trainer.cluster.distribute import Decisions
        for _ in range(60):  # the same all-reduce as in a step, alone
            started = time.perf_counter()
            cluster.agreement.now(Decisions())
            agreements.append(time.perf_counter() - started)
    saves = []
    for i in range(4):
        started = time.perf_counter()
        store.save({"global_step": i})
        saves.append(time.perf_counter() - started)
        store.flush(60)
    store.close()
    if cluster.is_chief:
        batch = built.train.batch_size
        with open(out, "w") as fh:
            json.dump({"workers": cluster.workers, "step_s": {k: min(v) for k, v in times.items()},
                       "agreement_s": statistics.median(agreements[10:]) if agreements else None,
                       "agree_every": cluster.agreement.every,
                       "examples_per_s": batch / min(times["without"]),
                       "save_blocked_s": statistics.median(saves[1:])}, fh)


def _run_workers(n: int, preset: str, steps: int, rounds: int) -> dict:
    out = tempfile.mktemp(suffix=".json")
    cmd = [sys.executable, "-m", HERE, "--worker", "--preset", preset, "--steps", str(steps),
           "--rounds", str(rounds), "--out", out]
    if n == 1:
        subprocess.run(cmd, cwd=ROOT, env=ENV, check=True, capture_output=True)
    else:
        ports = _ports(n)
        procs = [subprocess.Popen(cmd, cwd=ROOT, env=_cluster_env(i, ports), stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL) for i in range(n)]
        for p in procs:
            assert p.wait(timeout=1800) == 0, "a bench worker failed"
    with open(out) as fh:
        return json.load(fh)


def _trainer_workers(args: list[str]) -> list[subprocess.Popen]:
    ports = _ports(2)
    return [subprocess.Popen([sys.executable, "-m", "trainer", "train", *args], cwd=ROOT, env=_cluster_env(i, ports),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]


def _until_step(proc, step: int) -> None:
    for line in proc.stdout:
        if line.startswith("STEP ") and json.loads(line[5:])["global_step"] >= step:
            return
    raise RuntimeError("the run ended early")


def stop_and_kill_times(tmp: str) -> dict:
    job = os.path.join(ROOT, "tests", "user_job.py")
    base = ["--job", job, "--no-tensorboard", "--examples", "65536", "--log-every-steps", "1"]
    procs = _trainer_workers(["--run-dir", os.path.join(tmp, "stop"), *base])
    _until_step(procs[0], 50)
    sent = time.monotonic()
    procs[1].send_signal(signal.SIGTERM)
    for p in procs:
        p.communicate(timeout=300)
    stop_s = time.monotonic() - sent
    codes = [p.returncode for p in procs]
    procs = _trainer_workers(["--run-dir", os.path.join(tmp, "kill"), *base])
    _until_step(procs[0], 50)
    procs[1].kill()
    killed = time.monotonic()
    procs[0].communicate(timeout=600)
    procs[1].communicate(timeout=60)
    return {"signal_one_worker_to_all_exited_s": round(stop_s, 2), "exit_codes_after_signal": codes,
            "survivor_exit_after_peer_sigkill_s": round(time.monotonic() - killed, 2),
            "survivor_exit_code": procs[0].returncode}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", default="bench/results/multiworker.json")
    args = p.parse_args()
    if args.worker:
        worker(args.preset, args.steps, args.rounds, args.out)
        return
    one = _run_workers(1, args.preset, args.steps, args.rounds)
    two = _run_workers(2, args.preset, args.steps, args.rounds)
    times = stop_and_kill_times(tempfile.mkdtemp())
    with_a, without = two["step_s"]["with agreement"], two["step_s"]["without"]
    per_step = two["agreement_s"] / two["agree_every"] / without
    report = {"preset": args.preset, "one_worker": one, "two_workers": two,
              "agreement_overhead_fraction": per_step, "end_to_end_difference": (with_a - without) / without,
              **times}
    write_json(args.out, report)
    print(f"{args.preset} preset, {args.steps} steps per timed run, best of {args.rounds}; workers on 127.0.0.1\n")
    print(markdown_table(["question", "result"], [
        ["one agreement (34-float all-reduce, 2 workers); its share of a step at one per "
         f"{two['agree_every']} steps", f"{two['agreement_s'] * 1000:.2f} ms; {per_step * 100:.2f}% of a "
                                        f"{without * 1000:.0f} ms step"],
        ["step time, 2 workers, with / without agreeing (end to end, noisy on 2 shared cores)",
         f"{with_a * 1000:.1f} / {without * 1000:.1f} ms ({report['end_to_end_difference'] * 100:+.2f}%)"],
        ["throughput, 1 worker vs 2 workers (same global batch)",
         f"{one['examples_per_s']:.0f} vs {two['examples_per_s']:.0f} examples/s"],
        ["loop blocked per checkpoint, 1 worker vs 2 workers",
         f"{one['save_blocked_s'] * 1000:.1f} vs {two['save_blocked_s'] * 1000:.1f} ms"],
        ["SIGTERM on worker 1 -> both workers exited", f"{times['signal_one_worker_to_all_exited_s']} s "
                                                       f"(exit codes {times['exit_codes_after_signal']})"],
        ["SIGKILL of worker 1 -> the chief exited", f"{times['survivor_exit_after_peer_sigkill_s']} s "
                                                    f"(exit code {times['survivor_exit_code']})"],
    ]))


if __name__ == "__main__":
    main()
