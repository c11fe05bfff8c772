"""Plain tf.data pipelines resume from their checkpointed iterator state.

A streaming pipeline over TFRecord shards (interleave, shuffle buffer, parallel
map; jobs/fashion_mnist_files.py) is stopped by SIGTERM at random steps (the
seed and the stops are in the test's report section) and at chosen steps
(--max-steps: where the shuffle buffer drains, an epoch's last step, its end,
the next epoch's first step, right after a resume): each resume restores the
iterator (the log says so and never skips) and the final weights are bitwise
equal to an uninterrupted run's; the same with two workers, each reading the
global batches and training on its share. (A changed worker count keeps the
order exactly once: tests/test_elastic.py.) In-process, a restored iterator yields the
batches of every later epoch exactly, whatever step it was saved at, also
where TensorFlow's checkpoint alone loses the shuffles' seed positions. A
pipeline that cannot be checkpointed (a Python generator) says why in one
warning and resumes by skipping; one whose reshuffling cannot be placed
replays from the run's start.
"""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys

import pytest

from tests import helpers

FILES_JOB = ["--job", "jobs/fashion_mnist_files.py", "--preset", "tiny", "--no-tensorboard",
             "--save-every-steps", "10"]
FILES_STEPS = 3 * 32  # 3 epochs of 1024 images in batches of 32
GENERATOR_JOB = ["--job", "tests/generator_job.py", "--epochs", "2", "--no-tensorboard", "--save-every-steps", "5"]
GENERATOR_STEPS = 2 * 16


@pytest.fixture(scope="session")
def shards(tmp_path_factory):
    """Fashion-MNIST written once as 8 TFRecord shards (the job's documented preparation step)."""
    folder = tmp_path_factory.mktemp("fmnist-files")
    subprocess.run([sys.executable, "jobs/fashion_mnist_files.py", "prepare", "--out", str(folder), "--shards", "8",
                    "--train-size", "1024", "--test-size", "128"], cwd=helpers.ROOT, env=helpers.env(), check=True,
                   capture_output=True, timeout=300)
    return folder


def test_tfrecord_pipeline_resumes_from_its_iterator_bitwise(tmp_path, shards, uninterrupted, request):
    args = [*FILES_JOB, "--files", str(shards)]
    reference = uninterrupted("files-stream", args)
    seed = int(os.environ.get("STOPS_SEED", random.randrange(2**32)))  # STOPS_SEED=n repeats a run's targets
    outputs = []
    try:
        stops = helpers.interrupt_randomly(tmp_path / "run", args, signal.SIGTERM, random.Random(seed), FILES_STEPS,
                                           interrupts=2, outputs=outputs)
        _assert_restored_every_time(outputs, stops)
        helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(tmp_path / "run"))
    except AssertionError as exc:
        raise AssertionError(f"{_stops_report(seed, outputs)}\n{exc}") from exc
    finally:
        request.node.add_report_section("call", "random stops", _stops_report(seed, outputs))


def _stops_report(seed: int, outputs) -> str:
    stops = [helpers.stop_of(out)[:4] for out in outputs if helpers.STOP_LINE.search(out)]
    return f"random.Random({seed}) drew the targets; stopped at (epoch, step, steps, global step): {stops}"


def _assert_restored_every_time(outputs, stops) -> None:
    for out in outputs:
        assert "cannot be checkpointed" not in out and "skipping" not in out and "replaying" not in out, out
    for stop, out in zip(stops, outputs[1:]):  # every resume with steps left restores the iterator
        if stop[3] < FILES_STEPS:
            assert "restored the iterator of" in out, out


def test_tfrecord_pipeline_resumes_bitwise_from_chosen_steps(tmp_path, shards, uninterrupted):
    """The branches a random stop may take, each on purpose, in one run (32 steps per epoch; from
    step 25 on the shuffle buffer's input is exhausted, and TensorFlow's saved state no longer holds
    the file shuffle's seed position): stopped by --max-steps where the buffer has drained (26),
    right after that resume (27), at an epoch's last step (31), at its end (32) and at the next
    epoch's first step (33), resumed each time; bitwise equal at the end. A resume that misplaced
    the order at any of them would change every later epoch."""
    limits = (26, 27, 31, 32, 33)
    args = [*FILES_JOB, "--files", str(shards)]
    reference = uninterrupted("files-stream", args)
    base = ["train", "--run-dir", str(tmp_path / "run"), *args, "--quiet"]
    outputs = []
    for limit in limits:
        result = helpers.run([*base, "--max-steps", str(limit)])
        assert result.returncode == 0 and f"training complete (--max-steps {limit})" in result.stdout, result.stderr
        outputs.append(result.stderr)
    final = helpers.run(base)
    assert final.returncode == 0, final.stderr
    _assert_restored_every_time([*outputs, final.stderr], [(0, 0, 0, limit) for limit in limits])
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(tmp_path / "run"))


def test_uncheckpointable_pipeline_warns_once_and_resumes_by_skipping(tmp_path, uninterrupted):
    reference = uninterrupted("generator", GENERATOR_JOB)
    outputs = []
    stops = helpers.interrupt_randomly(tmp_path / "run", GENERATOR_JOB, signal.SIGTERM, random.Random(),
                                       GENERATOR_STEPS, interrupts=1, outputs=outputs)
    for out in outputs:
        assert out.count("whose iterator cannot be checkpointed (PyFunc is stateful)") == 1, out
        assert "restored the iterator of" not in out, out
    if stops and stops[0][1] not in (0, stops[0][2]):  # stopped mid-epoch: the resume skips to the position
        assert f"skipping {stops[0][1]} batches of" in outputs[1], outputs[1]
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(tmp_path / "run"))


def test_one_iterator_over_every_epoch_yields_what_fit_iterates(tmp_path):
    """fit iterates the dataset once per epoch, and a reshuffling pipeline draws each epoch's order
    from how often it was iterated: the trainer's single iterator over dataset.repeat() must yield
    the same batches, epoch after epoch, and so must one restored from a state saved mid-epoch."""
    import numpy as np
    import tensorflow as tf

    from trainer.data.accepted import from_job

    for shard in range(4):
        with tf.io.TFRecordWriter(str(tmp_path / f"s{shard}.tfrecord")) as writer:
            for i in range(40):
                writer.write(tf.io.serialize_tensor(tf.constant(shard * 100 + i, tf.int64)).numpy())

    def pipeline():
        tf.random.set_seed(7)
        files = tf.data.Dataset.from_tensor_slices(sorted(str(p) for p in tmp_path.glob("*.tfrecord")))
        examples = files.shuffle(4).interleave(tf.data.TFRecordDataset, cycle_length=2).shuffle(32)
        batches = examples.map(lambda r: tf.io.parse_tensor(r, tf.int64), num_parallel_calls=2,
                               deterministic=True).batch(10).prefetch(2)
        return batches.apply(tf.data.experimental.assert_cardinality(16))

    per_epoch = pipeline()
    expected = [b.numpy() for _ in range(3) for b in per_epoch]  # fit's way: one pass per epoch
    assert not np.array_equal(expected[0], expected[16])  # (epochs differ: the test can fail)
    source = from_job(pipeline(), "train")
    source.bind(tf.distribute.get_strategy())
    iterator = source.iterator(0, 0)
    got = [next(iterator).numpy() for _ in range(21)]
    source.capture()  # a save at epoch 2 step 5, restored by a source built anew (as a new process does)
    resumed = from_job(pipeline(), "train")
    resumed.bind(tf.distribute.get_strategy())
    resumed.state.assign(source.state)
    restored = resumed.iterator(1, 5)
    got += [next(restored).numpy() for _ in range(27)]
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_two_workers_restore_their_shards_and_end_bitwise(tmp_path, shards, request):
    """The TFRecord pipeline under MultiWorkerMirroredStrategy (two TF_CONFIG workers, each reading
    its own logical shards of the files by default): SIGTERM to both at a random step, resumed to
    the end; every worker of the resume restores its shards, nothing is skipped, and the weights
    end bitwise equal to an uninterrupted two-worker run's."""
    def workers(run_dir, *extra):
        return helpers.start_workers(["train", "--run-dir", str(run_dir), *FILES_JOB, "--files", str(shards), *extra])
    reference = helpers.finish(workers(tmp_path / "reference", "--quiet"))
    assert [code for code, _ in reference] == [0, 0], reference
    seed = int(os.environ.get("STOPS_SEED", random.randrange(2**32)))
    # (two workers agree on a stop every 8 global steps: a signal sent at most 16 steps before the
    # end is acted on at least one agreement before it, and the resume has steps left to restore)
    target = random.Random(seed).randint(1, FILES_STEPS - 17)
    request.node.add_report_section("call", "random stop", f"random.Random({seed}) drew global step {target}")
    procs = workers(tmp_path / "run", "--log-every-steps", "1")
    out, reached = helpers.wait_for_step(procs[0], target)
    assert reached is not None, out
    for proc in procs:
        proc.send_signal(signal.SIGTERM)
    stopped = helpers.finish(procs)
    assert [code for code, _ in stopped] == [128 + signal.SIGTERM] * 2, stopped
    assert helpers.stop_of(out + stopped[0][1])[3] < FILES_STEPS
    resumed = helpers.finish(workers(tmp_path / "run", "--quiet"))
    assert [code for code, _ in resumed] == [0, 0], resumed
    _assert_restored_every_time([out, *(output for _, output in (*reference, *stopped, *resumed))], [])
    assert all("reads shards" in output for _, output in reference), reference
    assert all("restored logical shards" in output for _, output in resumed), resumed
    helpers.assert_bitwise_equal(helpers.latest_variables(tmp_path / "reference"),
                                 helpers.latest_variables(tmp_path / "run"))


def _records(folder, shards: int, per_shard: int):
    import tensorflow as tf
    for shard in range(shards):
        with tf.io.TFRecordWriter(str(folder / f"s{shard}.tfrecord")) as writer:
            for i in range(per_shard):
                writer.write(tf.io.serialize_tensor(tf.constant(shard * 1000 + i, tf.int64)).numpy())
    return sorted(str(p) for p in folder.glob("*.tfrecord"))


def _fit_order(pipeline, epochs: int) -> list:
    """The batches of ``epochs`` passes, one pass per epoch as fit iterates them."""
    dataset = pipeline()
    return [b.numpy().tobytes() for _ in range(epochs) for b in dataset]


def _resumed(pipeline, stops, total: int) -> list:
    """The batches of a run stopped after each of ``stops`` batches, each time saved and resumed
    by a source built anew (as a new process builds it, with the same graph-level seed)."""
    import tensorflow as tf

    from trainer.data.accepted import from_job
    got, state = [], b""
    for stop in [*stops, total]:
        source = from_job(pipeline(), "train")
        source.bind(tf.distribute.get_strategy())
        source.state.assign(state)
        iterator = source.iterator(*divmod(len(got), source.steps_per_epoch))
        got += [next(iterator).numpy().tobytes() for _ in range(stop - len(got))]
        source.capture()
        state = source.state.numpy()
    return got


def _shuffled_files(paths, cycle: int, buffer: int, batch: int):
    """Shards in a new order each pass, interleaved, a shuffle buffer that drains its input before
    the pass ends, a parallel map, a short last batch, prefetch: the pipeline's every shape."""
    import tensorflow as tf

    def pipeline():
        tf.random.set_seed(7)
        files = tf.data.Dataset.from_tensor_slices(paths).shuffle(len(paths))
        examples = files.interleave(tf.data.TFRecordDataset, cycle_length=cycle).shuffle(buffer)
        batches = examples.map(lambda r: tf.io.parse_tensor(r, tf.int64), num_parallel_calls=2,
                               deterministic=True).batch(batch).prefetch(2)
        count = len(paths) * 37
        return batches.apply(tf.data.experimental.assert_cardinality(-(-count // batch)))
    return pipeline


def test_restored_iterator_continues_every_later_epoch_exactly_from_any_step(tmp_path, monkeypatch):
    """Saved after any batch of three epochs (once, and again right after the resume), restored by
    a new source: the batches are fit's, epoch after epoch. TensorFlow's checkpoint alone is not
    enough: from the step where the shuffle buffer's input is exhausted, or where a short last
    batch drops the shuffle, to the epoch's end, the saved state no longer holds the seed
    position of the dropped shuffles, and later epochs came in another order."""
    from trainer.data import streaming
    pipeline = _shuffled_files(_records(tmp_path, 4, 37), cycle=2, buffer=40, batch=10)  # 15 batches, the last of 8
    steps = 15
    expected = _fit_order(pipeline, 3)
    assert expected[:steps] != expected[steps:2 * steps]  # (epochs differ: the test can fail)
    for stop in range(1, 3 * steps):
        assert _resumed(pipeline, [stop], 3 * steps) == expected, f"saved after batch {stop}"
    for stop in (5, 11, 14, 15, 16, 29, 30):
        assert _resumed(pipeline, [stop, stop + 1], 3 * steps) == expected, f"saved after batches {stop}, {stop + 1}"
    # (the test can fail: without placing the seed generators, a state saved once the buffer's input
    # is exhausted, at the epoch's last step or at its end, restores epoch 2 in another order)
    monkeypatch.setattr(streaming, "seed_generator_states", lambda shuffles, passes: [])
    for stop in (11, 14, 15):
        assert _resumed(pipeline, [stop], 3 * steps) != expected, f"saved after batch {stop}"


def test_a_checkpoint_without_iterator_state_skips_once_then_restores(caplog):
    """A checkpoint holding no iterator state (written before this version, or while the state
    could not be saved) resumes by skipping, with the warning; the state the next save takes
    from that iterator then restores at the following resume, which goes on exactly."""
    import tensorflow as tf

    from trainer.data.accepted import from_job

    def pipeline():
        return tf.data.Dataset.range(40).batch(4)  # 10 steps per epoch, the same batches every pass
    expected = [b.numpy().tobytes() for _ in range(3) for b in pipeline()]
    got = expected[:13]
    state = b""
    for position, count in (((1, 3), 4), ((1, 7), 13)):
        source = from_job(pipeline(), "train")
        source.bind(tf.distribute.get_strategy())
        source.state.assign(state)
        with caplog.at_level("WARNING", logger="trainer"):
            iterator = source.iterator(*position)
        assert ("holds no iterator state" in caplog.text) == (not state), caplog.text
        got += [next(iterator).numpy().tobytes() for _ in range(count)]
        source.capture()
        state = source.state.numpy()
        caplog.clear()
    assert got == expected


def test_reshuffling_the_checkpoint_cannot_place_replays_from_the_start(tmp_path, caplog):
    """A reshuffling shuffle in a branch of concatenate is not instantiated once per pass at its
    start, so its seed position cannot be derived: the source says so once, saves no state and
    replays the run's batches from its first one, exactly."""
    import tensorflow as tf

    from trainer.data.accepted import from_job

    def pipeline():
        tf.random.set_seed(3)
        head = tf.data.Dataset.range(30)
        return head.concatenate(tf.data.Dataset.range(100, 130).shuffle(16)).batch(7)
    source = from_job(pipeline(), "train")
    assert not source.verdict.shuffles and "cannot be checkpointed exactly" in source.warning
    expected = _fit_order(pipeline, 3)
    steps = source.steps_per_epoch
    assert expected[steps:2 * steps] != expected[2 * steps:]  # (epochs differ: the test can fail)
    with caplog.at_level("INFO", logger="trainer"):
        for stop in range(1, 3 * steps):
            assert _resumed(pipeline, [stop], 3 * steps) == expected, f"saved after batch {stop}"
    assert "restored the iterator" not in caplog.text and f"replaying {3 * steps - 1} batches" in caplog.text
