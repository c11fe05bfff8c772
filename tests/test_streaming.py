"""Plain tf.data pipelines resume from their checkpointed iterator state.

A streaming pipeline over TFRecord shards (interleave, shuffle buffer, parallel
map; jobs/fashion_mnist_files.py) is stopped by SIGTERM at random steps: each
resume restores the iterator (the log says so and never skips) and the final
weights are bitwise equal to an uninterrupted run's. A pipeline that cannot be
checkpointed (a Python generator) says why in one warning and resumes by skipping.
"""
from __future__ import annotations

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


def test_tfrecord_pipeline_resumes_from_its_iterator_bitwise(tmp_path, shards, uninterrupted):
    args = [*FILES_JOB, "--files", str(shards)]
    reference = uninterrupted("files-stream", args)
    outputs = []
    stops = helpers.interrupt_randomly(tmp_path / "run", args, signal.SIGTERM, random.Random(), FILES_STEPS,
                                       interrupts=2, outputs=outputs)
    for out in outputs:
        assert "cannot be checkpointed" not in out and "skipping" not in out, out
    for stop, out in zip(stops, outputs[1:]):  # every resume with steps left restores the iterator
        if stop[3] < FILES_STEPS:
            assert "restored the iterator of" in out, out
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

    from trainer.data.sources import from_job

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
    source.capture()  # a save at epoch 2 step 5
    source._iterator = None
    restored = source.iterator(1, 5)
    got += [next(restored).numpy() for _ in range(27)]
    assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))


def test_changed_replica_count_warns_and_never_restores_a_stale_iterator(tmp_path, shards):
    """Saved by one process, resumed with two replicas: the saved iterator does not apply (warning,
    skipping); stopped and resumed by one process again: that checkpoint holds no iterator state, so
    the run says so and skips, instead of restoring the state of the first stop."""
    base = ["train", "--run-dir", str(tmp_path / "run"), *FILES_JOB, "--files", str(shards), "--epochs", "1"]
    positions = []
    for extra in ([], ["--strategy", "mirrored", "--cpu-devices", "2"], []):
        target = positions[-1][3] + 3 if positions else 3
        code, out = helpers.interrupt_at_step([*base, *extra], signal.SIGTERM, target)
        if positions:
            e, s, n, g, _ = positions[-1]
            mid_epoch = 0 < s < n
            assert "restored the iterator of" not in out, out
            if extra:
                assert out.count("iterator cannot be checkpointed (under MirroredStrategy") == 1, out
            if mid_epoch:
                assert (f"skipping {s} batches of" if extra else "holds no iterator state") in out, out
        if code == 0:  # the run finished before the signal landed
            break
        assert code == 128 + signal.SIGTERM, out
        positions.append(helpers.stop_of(out))
