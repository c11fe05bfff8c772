"""Elastic resume, exactly once: a run resumed with another number of replicas (one process,
``--cpu-devices``) or workers (TF_CONFIG) trains every global step on exactly the examples, in
exactly the order, of an uninterrupted one-replica run; each replica on the share that
``Replicas.bounds`` documents; no step twice, none lost. For ArrayData, EpochBatches, and a
plain tf.data pipeline resumed from its checkpointed iterator. The job's train step writes down
what each replica saw (tests/ledger_job.py). Weights are not compared: the gradients are
summed in another order, so they differ in the last bits (documented)."""
import random
import signal

import pytest

from tests import helpers, ledger_job
from trainer.data.sources import Replicas

JOB = str(helpers.ROOT / "tests" / "ledger_job.py")
STEPS_PER_EPOCH = ledger_job.EXAMPLES // 16
TOTAL = ledger_job.EPOCHS * STEPS_PER_EPOCH


def _args(tmp_path, name, source, *extra):
    return ["train", "--run-dir", str(tmp_path / name), "--job", JOB, "--source", source,
            "--ledger", str(tmp_path / f"{name}.txt"), "--no-tensorboard", "--no-export", *extra]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The ledger of an uninterrupted one-replica run: each epoch a permutation of the examples."""
    return _single_ledger(tmp_path_factory.mktemp("ledger"), "arrays")


@pytest.fixture(scope="module")
def single_stream(tmp_path_factory):
    return _single_ledger(tmp_path_factory.mktemp("ledger-stream"), "stream")


def _single_ledger(tmp, source):
    done = helpers.run(_args(tmp, "one", source))
    assert done.returncode == 0, done.stderr
    ledger = ledger_job.read(tmp / "one.txt")
    assert sorted(ledger) == list(range(TOTAL))
    for epoch in range(ledger_job.EPOCHS):
        steps = range(epoch * STEPS_PER_EPOCH, (epoch + 1) * STEPS_PER_EPOCH)
        assert sorted(i for step in steps for i in ledger[step][0]) == list(range(ledger_job.EXAMPLES))
    return {step: shares[0] for step, shares in ledger.items()}


def _assert_same_examples(ledger_file, single, counts_seen):
    changed = ledger_job.read(ledger_file)  # (a step trained twice fails here)
    assert sorted(changed) == list(range(TOTAL))
    counts = [len(changed[step]) for step in range(TOTAL)]
    assert counts[0] == counts_seen[0] and counts[-1] == counts_seen[-1] and set(counts) == set(counts_seen), counts
    for step in range(TOTAL):
        shares = changed[step]
        layout = Replicas(total=len(shares), first=0, local=len(shares))
        assert [i for r in sorted(shares) for i in shares[r]] == single[step], step
        assert [len(shares[r]) for r in sorted(shares)] == [hi - lo for lo, hi in
                                                             (layout.bounds(16, r) for r in sorted(shares))], step


def _next_target(rng, out, low, high):
    return max(rng.randint(low, high), helpers.stop_of(out)[3] + 1) if out else rng.randint(low, high)


def test_replica_count_changes_keep_the_global_order_exactly_once(tmp_path, single):
    """EpochBatches from a Python generator: 2 replicas -> SIGTERM -> 1 -> SIGTERM -> 3 to the end."""
    rng = random.Random(7)
    code, out = helpers.interrupt_at_step(_args(tmp_path, "run", "epoch_batches", "--cpu-devices", "2"),
                                          signal.SIGTERM, rng.randint(2, TOTAL // 3))
    assert code == 128 + signal.SIGTERM, out
    code, out = helpers.interrupt_at_step(_args(tmp_path, "run", "epoch_batches"), signal.SIGTERM,
                                          _next_target(rng, out, TOTAL // 3 + 2, 2 * TOTAL // 3))
    assert code == 128 + signal.SIGTERM and "were written with 2 replicas; this run has 1" in out, out
    done = helpers.run(_args(tmp_path, "run", "epoch_batches", "--cpu-devices", "3"))
    assert done.returncode == 0, done.stderr
    assert "MirroredStrategy over 3 CPU devices" in done.stderr and "this run has 3" in done.stderr
    _assert_same_examples(tmp_path / "run.txt", single, [2, 1, 3])


def _workers_until(args, n, sig, target) -> str:
    """``n`` TF_CONFIG workers (one plain process for 1) signalled once the first reports ``target``."""
    procs = helpers.start_workers([*args, "--log-every-steps", "1"], n) if n > 1 else [helpers.start(
        [*args, "--log-every-steps", "1"])]
    out, reached = helpers.wait_for_step(procs[0], target)
    assert reached is not None, out
    for proc in procs:
        proc.send_signal(sig)
    results = helpers.finish(procs)
    assert [code for code, _ in results] == [128 + sig] * n, results
    return out + results[0][1]


def test_worker_count_changes_keep_the_global_order_exactly_once(tmp_path, single):
    """ArrayData: 2 workers -> SIGTERM -> 1 -> SIGTERM -> 3 workers to the end."""
    rng = random.Random(8)
    args = _args(tmp_path, "run", "arrays")
    out = _workers_until(args, 2, signal.SIGTERM, rng.randint(2, TOTAL // 3))
    out = _workers_until(args, 1, signal.SIGTERM, _next_target(rng, out, TOTAL // 3 + 2, 2 * TOTAL // 3))
    assert "were written with 2 replicas; this run has 1" in out, out
    results = helpers.finish(helpers.start_workers([*args, "--quiet"], 3))
    assert [code for code, _ in results] == [0, 0, 0], results
    assert "this run has 3" in results[0][1]
    _assert_same_examples(tmp_path / "run.txt", single, [2, 1, 3])


def test_a_streamed_pipeline_keeps_its_order_across_worker_counts(tmp_path, single_stream):
    """A plain tf.data pipeline (reshuffling shuffle buffer), resumed from its checkpointed
    iterator: 2 workers -> SIGTERM -> 1 process -> SIGTERM -> 3 replicas to the end. Every
    resume restores the iterator saved by another worker count; nothing is skipped."""
    rng = random.Random(9)
    args = _args(tmp_path, "run", "stream")
    outputs = [_workers_until(args, 2, signal.SIGTERM, rng.randint(2, TOTAL // 3))]
    outputs.append(_workers_until(args, 1, signal.SIGTERM, _next_target(rng, outputs[-1], TOTAL // 3 + 2,
                                                                        2 * TOTAL // 3)))
    done = helpers.run([*args, "--cpu-devices", "3"])
    assert done.returncode == 0, done.stderr
    outputs.append(done.stderr)
    assert "were written with 2 replicas; this run has 1" in outputs[1] and "this run has 3" in outputs[2]
    for out in outputs[1:]:
        assert "restored the iterator of" in out and "skipping" not in out and "replaying" not in out, out
    assert "cannot be checkpointed" not in "".join(outputs)
    _assert_same_examples(tmp_path / "run.txt", single_stream, [2, 1, 3])
