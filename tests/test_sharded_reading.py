"""Logical shards of a streamed pipeline, in one process and without training: a reader saved
after any step and restored by a new source (as a new process builds it) yields the
uninterrupted reader's micro-batches; a state saved by two workers and restored by one or
four gives every record of a pass exactly once; and the choices and refusals around it (a partial state: tests/test_sharded.py).
The multi-worker runs are in tests/test_sharded.py."""
from __future__ import annotations

import logging
import random

import numpy as np
import pytest
import tensorflow as tf

from tests import ledger_job
from trainer.data import pass_graph, shard_plan, sharded
from trainer.data.accepted import from_job
from trainer.errors import BAD_INPUT, CHECKPOINT_ERROR

SIZES = [40] * 8  # 8 files; batch 16 in 4 shards: 4 per shard and step, 20 steps a pass; buffer 64 < 80
BATCH, SHARDS = 16, 4
STEPS = sum(SIZES) // BATCH


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("files")
    ledger_job.write_files(folder, SIZES)
    return folder


def _source(files, kind: str, workers: int = 1, index: int = 0, state: bytes = b""):
    """The job's training data as a new process builds it, bound as worker ``index`` of ``workers``."""
    tf.random.set_seed(7)
    settings = ledger_job.Settings(batch_size=BATCH, source=kind, files=str(files))
    source = from_job(ledger_job.build_data(settings), "train")
    source.bind(tf.distribute.get_strategy(), shard_plan.Workers(workers, index, index, SHARDS))
    source.state.assign(state)
    return source


def _ids(batch) -> list[int]:
    return [int(i) for i in batch[0][:, 0].numpy()]


@pytest.mark.parametrize("kind", ["files", "pipelines"])
def test_shards_restored_after_any_step_continue_exactly(files, kind, request):
    """Three passes read through, and read again with saves at random steps and near pass ends,
    each restored by a new source: the same ids in the same order; each pass every record once,
    in an order of its own. (Passes seeded by a generator the shards share come in another order
    in every run: see pass_graph.)"""
    total = 3 * STEPS
    first = _source(files, kind)
    expected = [_ids(next(first.iterator(0, 0))) for _ in range(total)]
    passes = [expected[p * STEPS:(p + 1) * STEPS] for p in range(3)]
    for one_pass in passes:
        assert sorted(i for step in one_pass for i in step) == list(range(sum(SIZES)))
    assert passes[0] != passes[1] != passes[2] != passes[0]  # (each pass reshuffled)
    seed = random.SystemRandom().randrange(2**32)
    request.node.add_report_section("call", "stops", f"random.Random({seed})")
    # (near a pass's end: the next pass may have begun in the read-ahead)
    stops = random.Random(seed).sample(range(1, total), 3) + [STEPS - 2, STEPS, 2 * STEPS - 1, 2 * STEPS + 3]
    got, state = [], b""
    for stop in [*sorted(set(stops)), total]:
        source = _source(files, kind, state=state)
        feed = source.iterator(*divmod(len(got), STEPS))
        got += [_ids(next(feed)) for _ in range(stop - len(got))]
        source.capture()
        state = source.state.numpy()
    assert got == expected, f"random.Random({seed}) stops {stops}"


def test_a_state_saved_by_two_workers_resumes_on_one_or_four_exactly_once(files):
    """Workers 0 and 1 of 2 read 5 steps and save; the combined state restored by one worker,
    and by four, finishes the pass: every record of it once, none twice."""
    halves = [_source(files, "files", 2, index) for index in (0, 1)]
    seen = [i for source in halves for _ in range(5) for i in _ids(next(source.iterator(0, 0)))]
    blobs = [source._reader.mine() for source in halves]
    state = sharded.combine(blobs, shard_plan.Layout(SHARDS, BATCH, 2))
    assert sharded.unpack(state)["positions"] == [sharded.Position(1, 5)] * SHARDS
    for workers in (1, 4):
        rest = []
        for index in range(workers):
            source = _source(files, "files", workers, index, state)
            feed = source.iterator(0, 5)
            rest += [i for _ in range(STEPS - 5) for i in _ids(next(feed))]
        assert sorted(seen + rest) == list(range(sum(SIZES))), workers


def test_shard_counts_chosen_and_refused():
    split = shard_plan.Split(batch=64, files=100)
    assert shard_plan.choose_count(None, split, 1) == 64 and shard_plan.choose_count(None, split, 3) == 63
    assert shard_plan.choose_count(None, shard_plan.Split(batch=64, files=10), 4) == 8
    assert shard_plan.choose_count(None, shard_plan.Split(batch=60, files=None), 3, per_pipeline=True) == 60
    assert shard_plan.choose_count(None, shard_plan.Split(batch=56, files=None), 8, per_pipeline=True) == 56
    assert shard_plan.choose_count(None, shard_plan.Split(batch=60, files=None), 8, per_pipeline=True) == 0
    assert shard_plan.choose_count(None, shard_plan.Split(batch=64, files=3), 4) == 0
    with pytest.raises(shard_plan.ShardCountError, match="cannot be split evenly among 3 workers.*1, 2, 4 or 8") as bad:
        shard_plan.choose_count(8, split, 3)
    assert bad.value.exit_code == BAD_INPUT
    with pytest.raises(shard_plan.ShardCountError, match="only 10 files"):
        shard_plan.choose_count(12, shard_plan.Split(batch=64, files=10), 1)
    with pytest.raises(shard_plan.ResumeShardError, match="12 logical shards.*5 workers.*1, 2, 3, 4, 6 or 12") as bad:
        shard_plan.resume_layout({"shards": 12, "batch": 24}, 5, 0)
    assert bad.value.exit_code == CHECKPOINT_ERROR
    assert list(shard_plan.resume_layout({"shards": 12, "batch": 24}, 3, 2).owned()) == [8, 9, 10, 11]


def test_pipelines_that_cannot_be_split_say_why(files, caplog):
    arrays = tf.data.Dataset.from_tensor_slices(np.zeros((32, 2), "float32")).batch(8)
    source = from_job(arrays, "train")
    assert "list of files" in shard_plan.inspect(source.stream, source.verdict).reason
    unknown = tf.data.Dataset.from_tensor_slices(sorted(map(str, files.glob("*.tfrecord")))).interleave(
        tf.data.TFRecordDataset).batch(8)
    verdict = from_job(unknown.apply(tf.data.experimental.assert_cardinality(24)), "train").verdict
    assert shard_plan.inspect(unknown, verdict).reason == shard_plan.UNKNOWN_LENGTH  # (until the length is learned)
    assert shard_plan.inspect(unknown, verdict, known_length=True).reason is None
    nested = tf.data.Dataset.from_tensor_slices(sorted(map(str, files.glob("*.tfrecord")))).interleave(
        lambda path: tf.data.TFRecordDataset(path).shuffle(8)).batch(8)
    nested_source = from_job(nested.apply(tf.data.experimental.assert_cardinality(STEPS * 2)), "train")
    nested_source.bind(tf.distribute.get_strategy(), shard_plan.Workers(1, 0, 0, SHARDS))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert nested_source.iterator(0, 0) is not None and nested_source.reader is None
    assert "reads it whole (it reshuffles inside a function" in caplog.text
    caplog.clear()  # of unknown length too: the reason it is never split, once, at its start
    unknown_nested = from_job(nested, "train")
    unknown_nested.bind(tf.distribute.get_strategy(), shard_plan.Workers(1, 0, 0, SHARDS))
    with caplog.at_level(logging.WARNING, logger="trainer"):
        assert unknown_nested.iterator(0, 0) is not None and unknown_nested.reader is None
    assert "reads it whole (it reshuffles inside a function" in caplog.text, caplog.text
    assert "in its first epoch" not in caplog.text, caplog.text
    oversized = from_job(lambda context: ledger_job._files_pipeline(
        ledger_job.Settings(batch_size=BATCH, files=str(files))), "train")  # ignores the context's batch size
    oversized.bind(tf.distribute.get_strategy(), shard_plan.Workers(1, 0, 0, SHARDS))
    with pytest.raises(sharded.DataError, match="gave a batch of 16, more than its share.*get_per_replica_batch_size"):
        next(oversized.iterator(0, 0))


def test_passes_follow_one_another_and_a_shard_without_records_fails():
    """A shard's iterator runs through its passes (each shuffled anew, the same every time), starts
    at any pass and step, and fails with its message where the pipeline has no records."""
    def read(pipeline, first, skip, n):
        iterator = iter(pipeline.passes(first, skip))
        return [(int(p), int(i), [int(x) for x in element]) for p, i, element in (next(iterator) for _ in range(n))]
    def made():  # (as a new process makes it: the same seeds)
        tf.random.set_seed(3)
        return pass_graph.PassPipeline(tf.data.Dataset.range(10).shuffle(10).batch(4), 1, 3)
    pipeline = made()
    passes = read(pipeline, 0, 0, 9)
    assert [(p, i) for p, i, _ in passes] == [(p, i) for p in range(3) for i in range(3)]
    for p in range(3):
        assert sorted(x for _, _, element in passes[3 * p:3 * p + 3] for x in element) == list(range(10))
    assert passes[0][2] != passes[3][2] != passes[6][2]
    assert read(made(), 1, 2, 4) == passes[5:]
    assert read(pipeline, 1, 3, 1) == passes[6:7]  # (a pass skipped whole: the next one)
    empty = pass_graph.PassPipeline(tf.data.Dataset.range(10).filter(lambda x: x > 10).batch(4), 0, 1)
    with pytest.raises(tf.errors.InvalidArgumentError, match="shard 0 has no records"):
        next(iter(empty.passes(0, 0, "shard 0 has no records")))
    with pytest.raises(pass_graph.PassGraphError, match="draws a new random order"):
        pass_graph.PassPipeline(tf.data.Dataset.random(seed=1, rerandomize_each_iteration=True).take(4).batch(2), 0, 1)
