"""Workers that never come or freeze end the others within the bound (``--peer-timeout-seconds``),
and a stop signal works while a worker waits for its peers. Real TF_CONFIG workers on
127.0.0.1, real signals. "Within the bound" is measured from the event (the wait began, the
peer froze, the signal was sent) to the exit, against the bound plus ``EXIT_SLACK_S``: the
bound is the trainer's promise, the slack is the process's own exit (TensorFlow's shutdown)."""
import random
import re
import signal
import time

from tests import helpers
from trainer import errors
from trainer.checkpoint.index import DIR, MARKER, committed
from trainer.cluster import peers
from trainer.storage import open_storage

BOUND_S = 20  # two workers that start together find each other well within it, on a busy machine too
LONE_BOUND_S = 10  # a lone worker has no one to find
EXIT_SLACK_S = 15  # docs/how-to/worker-loss.md: exiting takes the interpreter and TensorFlow a few seconds
SIGNAL_EXIT_S = 5  # the promise for a stop signal while waiting


def _args(run_dir, *extra, bound_s=BOUND_S):
    return ["train", "--run-dir", str(run_dir), *helpers.TWO_WORKERS, "--peer-timeout-seconds", str(bound_s), *extra]


def test_a_lone_worker_exits_6_after_the_bound_and_143_within_seconds_of_sigterm(tmp_path):
    """Two lone workers (each worker 1 of a cluster whose chief never comes), side by side: one
    waits out the bound, the other is sent SIGTERM while it waits."""
    waiting, stopped = (helpers.start_worker(_args(tmp_path / name, bound_s=LONE_BOUND_S),
                                             [f"127.0.0.1:{p}" for p in helpers.free_ports(2)], 1)
                        for name in ("waiting", "stopped"))
    started = {}
    for name, proc in (("waiting", waiting), ("stopped", stopped)):
        helpers.wait_for(proc, "worker 1 (127.0.0.1:", timeout=300)
        started[name] = time.monotonic()
    stopped.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    out = stopped.communicate(timeout=60)[0]
    took = time.monotonic() - sent
    assert stopped.returncode == 128 + signal.SIGTERM, out
    assert "SIGTERM received: stopped at start-up, while waiting for the other workers" in out, out
    assert took <= SIGNAL_EXIT_S, f"SIGTERM to exit {took:.1f} s"
    out = waiting.communicate(timeout=LONE_BOUND_S + 120)[0]
    waited = time.monotonic() - started["waiting"]
    assert waiting.returncode == errors.PEER_LOST, out
    said = re.search(r"worker 0 \(127\.0\.0\.1:\d+\) never came: waited (\d+) s for it \(--peer-timeout-seconds "
                     rf"{LONE_BOUND_S}\)", out)
    assert said and int(said.group(1)) >= LONE_BOUND_S, out
    assert waited <= LONE_BOUND_S + EXIT_SLACK_S, f"exited {waited:.1f} s after its wait began"


def _commits(run_dir) -> dict[int, str]:
    folder = run_dir / DIR
    return {n: (folder / f"ckpt-{n}{MARKER}").read_text() for n in committed([p.name for p in folder.iterdir()])}


def test_a_frozen_chief_ends_worker_1_within_the_bound_and_commits_nothing_stale(tmp_path):
    """SIGSTOP the chief (the only writer of the run dir) at a random step of the first epoch:
    worker 1 exits 6 within the frozen-peer bound. SIGCONT: the chief stops too (6), without
    rewriting a commit or committing one behind another, and its newest commit is complete.
    (That a run resumes bitwise after a lost worker: tests/reliability/test_peer_kill.py.)"""
    run_dir = tmp_path / "run"
    target = random.Random(11).randint(1, helpers.TWO_WORKERS_STEPS)
    procs = helpers.start_workers(_args(run_dir, "--log-every-steps", "1"))
    out, reached = helpers.wait_for_step(procs[0], target)
    assert reached is not None, out
    procs[0].send_signal(signal.SIGSTOP)
    frozen = time.monotonic()
    out1 = procs[1].communicate(timeout=300)[0]
    took = time.monotonic() - frozen
    assert procs[1].returncode == errors.PEER_LOST, out1
    assert took <= peers.frozen_bound_s(BOUND_S) + EXIT_SLACK_S, f"worker 1 exited {took:.1f} s after the chief froze"
    before = _commits(run_dir)
    procs[0].send_signal(signal.SIGCONT)
    out0 = procs[0].communicate(timeout=300)[0]
    assert procs[0].returncode == errors.PEER_LOST, out0[-3000:]
    after = _commits(run_dir)
    assert all(after[n] == before[n] for n in after.keys() & before.keys()), "a commit was rewritten"
    assert all(n > max(before, default=0) for n in after.keys() - before.keys()), (before.keys(), after.keys())
    if after:
        helpers.assert_checkpoint_complete(open_storage(str(run_dir)), max(after))
