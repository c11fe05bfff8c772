"""Unit tests of the pure pieces: override parser, config and job settings, pruning rules,
data purity, per-example randomness, the signal seam."""
import math
import signal
from typing import Literal

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import errors
from trainer import settings as settings_mod
from trainer.checkpoint import index as idx
from trainer.config import ConfigError, TrainConfig
from trainer.data.example_random import ExampleRandom, example_keys
from trainer.data.sources import ArrayData, Replicas
from trainer.job import load
from trainer.settings import SettingError
from trainer.steering import lr_override
from trainer.steering.signals import StopRequest


@given(st.floats(min_value=1e-12, max_value=lr_override.MAX_LR, allow_nan=False))
def test_override_round_trips_every_valid_rate(value):
    assert lr_override.parse(f"{value!r}\n") == value
    assert lr_override.parse(f"# lowered after plateau\n  {value:e}  \n") == float(f"{value:e}")


@given(st.text(max_size=30))
def test_override_parser_accepts_only_positive_finite_numbers(text):
    try:
        value = lr_override.parse(text)
    except lr_override.OverrideError as exc:
        assert "lr_override" in str(exc) and "expected one positive number" in str(exc)
    else:
        assert math.isfinite(value) and 0 < value <= lr_override.MAX_LR


@pytest.mark.parametrize("text", ["", "\n", "nan", "-1", "0", "inf", "1e3", "0.1 0.2", "1,5", "0.1\n0.2"])
def test_override_rejects(text):
    with pytest.raises(lr_override.OverrideError):
        lr_override.parse(text)


@pytest.mark.parametrize("field,value,flag", [
    ("epochs", 0, "--epochs"), ("max_to_keep", 1, "--max-to-keep"), ("save_every_seconds", 0, "--save-every-seconds"),
    ("flush_timeout_seconds", 0, "--flush-timeout-seconds"),
    ("flush_timeout_seconds", float("inf"), "--flush-timeout-seconds"),
    ("keep_every_epochs", 0, "--keep-every-epochs"), ("lr_poll_seconds", 0, "--lr-poll-seconds"),
    ("peer_timeout_seconds", 0, "--peer-timeout-seconds"), ("peer_timeout_seconds", math.nan, "--peer-timeout-seconds"),
    ("strategy", "ring", "--strategy"), ("log_every_steps", -1, "--log-every-steps")])
def test_config_errors_name_the_flag(field, value, flag):
    with pytest.raises(ConfigError) as err:
        TrainConfig("runs/x", **{field: value})
    assert str(err.value).startswith(flag)


def test_reference_job_presets_and_settings():
    job = load(None)
    settings, epochs = job.choose("reference", {})
    assert (settings.stages, settings.filters, settings.weight_decay, settings.lr, settings.momentum,
            settings.batch_size, settings.image_size, settings.optimizer) == \
        ((9, 9, 9), (64, 64, 128, 256), 1e-4, 0.1, 0.0, 128, 32, "sgd")
    assert settings.train_size is None and settings.augment and settings.drop_remainder and epochs == 80
    small, epochs = job.choose(None, {"train_size": 2048})
    assert small.model == "cnn" and small.train_size == 2048 and epochs == 5
    with pytest.raises(SettingError, match="--preset"):
        job.choose("huge", {})
    with pytest.raises(SettingError, match="no setting 'depth'"):
        job.choose(None, {"depth": 3})
    with pytest.raises(ValueError, match="--filters needs 4 values"):
        job.choose("reference", {"filters": (8, 8)})
    assert "lr" not in job.identity()["settings"] and "stages" in job.identity()["settings"]


@pytest.mark.parametrize("kind,text,value", [
    (int, "7", 7), (float, "1e-3", 1e-3), (bool, "no", False), (tuple[int, ...], "9,9, 9", (9, 9, 9)),
    (int | None, "none", None), (Literal["sgd", "adam"], "adam", "adam"), (str, "x", "x")])
def test_setting_values_parse(kind, text, value):
    assert settings_mod.parse_value("s", kind, text) == value


@pytest.mark.parametrize("kind,text", [(int, "1.5"), (float, "fast"), (bool, "maybe"), (tuple[int, ...], "1,x"),
                                       (Literal["sgd", "adam"], "rmsprop"), (int, "none")])
def test_bad_setting_values_name_the_setting(kind, text):
    with pytest.raises(SettingError, match="^--my-setting: "):
        settings_mod.parse_value("my_setting", kind, text)


def _names(committed=(), partial=(), corrupt=()):
    out = []
    for n in committed:
        out += [f"ckpt-{n}.index", f"ckpt-{n}.data-00000-of-00001", f"ckpt-{n}.commit.json"]
    for n in partial:
        out += [f"ckpt-{n}.index"]
    for n in corrupt:
        out += [f"ckpt-{n}.index", f"ckpt-{n}.corrupt.json"]
    return out + ["checkpoint"]


def test_prune_keeps_newest_committed_and_in_flight():
    names = _names(committed=[1, 2, 3, 5], partial=[4, 6], corrupt=[0])
    doomed = idx.to_prune(names, max_to_keep=2)
    assert set(doomed) == {"ckpt-1.index", "ckpt-1.data-00000-of-00001", "ckpt-1.commit.json",
                           "ckpt-2.index", "ckpt-2.data-00000-of-00001", "ckpt-2.commit.json",
                           "ckpt-4.index"}
    assert doomed[0].endswith(".commit.json")  # markers go first
    assert idx.to_prune(_names(committed=[7]), max_to_keep=2) == []
    assert idx.to_prune(_names(partial=[1]), max_to_keep=2) == []  # nothing committed: touch nothing


def test_leftovers_are_uncommitted_files_only():
    names = _names(committed=[3], partial=[4], corrupt=[2]) + ["ckpt-3.commit.json.tmp-77", "ckpt-5_temp"]
    assert idx.leftovers(names) == ["ckpt-3.commit.json.tmp-77", "ckpt-4.index", "ckpt-5_temp"]
    assert idx.committed(names) == [3]
    assert "ckpt-3" in idx.state_file_text([3]).splitlines()[0]


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**31 - 1), st.integers(0, 50), st.integers(1, 300), st.integers(1, 64))
def test_epoch_order_is_a_permutation_from_seed_and_epoch(seed, epoch, n, batch):
    data = ArrayData(np.arange(n), np.arange(n), batch_size=batch)
    order = data.order(seed, epoch)
    assert np.array_equal(order, data.order(seed, epoch)) and sorted(order) == list(range(n))
    assert data.steps_per_epoch * batch >= n > (data.steps_per_epoch - 1) * batch


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 8), st.integers(0, 300))
def test_replica_shares_cover_a_batch_exactly(total, size):
    layout = Replicas(total=total)
    bounds = [layout.bounds(size, r) for r in range(total)]
    assert bounds[0][0] == 0 and bounds[-1][1] == size
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    assert max(hi - lo for lo, hi in bounds) - min(hi - lo for lo, hi in bounds) <= 1


def _augment(x, y, rand):
    return x + rand.uniform(shape=(3,)), y + rand.integers(0, 1000)


def test_resumed_epoch_equals_the_tail_of_the_full_one_and_shares_equal_the_batch():
    rng = np.random.default_rng(0)
    data = ArrayData(rng.normal(size=(100, 3)).astype(np.float32), np.arange(100, dtype=np.int32), batch_size=16,
                     augment=_augment)
    full = list(data.dataset(7, 3, 0))
    tail = list(data.dataset(7, 3, 4))
    assert len(full) == 7 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert xa.numpy().tobytes() == xb.numpy().tobytes() and np.array_equal(ya, yb)
    halves = [list(data.dataset(7, 3, 4, Replicas(total=2, first=r, local=1))) for r in (0, 1)]
    for (xa, _), first, second in zip(tail, *halves):  # each worker's share is its slice of the batch
        assert xa.numpy().tobytes() == np.concatenate([first[0].numpy(), second[0].numpy()]).tobytes()
    assert not np.array_equal(full[0][1], list(data.dataset(7, 4, 0))[0][1])


def test_example_random_depends_on_seed_epoch_position_only():
    keys = example_keys(1, 2, tf.range(6))
    a, b = ExampleRandom(keys), ExampleRandom(keys)
    first, again = a.uniform(shape=(4,)), b.uniform(shape=(4,))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, a.uniform(shape=(4,)))  # a second draw is another stream
    tail = ExampleRandom(example_keys(1, 2, tf.range(3, 6))).uniform(shape=(4,))
    assert np.array_equal(first[3:], tail)
    assert not np.array_equal(first, ExampleRandom(example_keys(1, 3, tf.range(6))).uniform(shape=(4,)))
    ints = ExampleRandom(example_keys(0, 0, tf.range(4000))).integers(-3, 4)
    assert set(np.unique(ints)) == set(range(-3, 4))
    normal = ExampleRandom(example_keys(0, 0, tf.range(20000))).normal()
    assert abs(float(tf.reduce_mean(normal))) < 0.05 and abs(float(tf.math.reduce_std(normal)) - 1) < 0.05


def test_stop_request_records_first_signal_and_aborts_on_second():
    aborted = []
    clock = iter([10.0, 11.0]).__next__
    stop = StopRequest(abort=aborted.append, clock=clock)
    assert not stop.requested
    stop.handle(signal.SIGUSR1)
    assert stop.requested and stop.signum == signal.SIGUSR1 and stop.received_at == 10.0
    assert aborted == []
    stop.handle(signal.SIGINT)
    assert aborted == [signal.SIGINT] and stop.signum == signal.SIGUSR1


def test_stop_request_installs_reversibly():
    before = signal.getsignal(signal.SIGUSR2)
    with StopRequest() as stop:
        assert signal.getsignal(signal.SIGUSR2) == stop.handle
        signal.raise_signal(signal.SIGUSR2)
        assert stop.signum == signal.SIGUSR2
        with stop:  # entered again (the CLI, then train()): the handlers stay until the outer exit
            pass
        assert signal.getsignal(signal.SIGUSR2) == stop.handle
    assert signal.getsignal(signal.SIGUSR2) == before


def test_exit_codes():
    assert errors.interrupted(signal.SIGTERM) == 143 and errors.interrupted(signal.SIGUSR1) == 138
    assert errors.is_interrupted(130) and not errors.is_interrupted(errors.CRASH)


def test_other_kinds_of_data_resume_by_skipping_and_say_so():  # (or from a plain dataset's iterator)
    import keras

    from trainer.data.accepted import from_job
    from trainer.data.sources import EpochBatches

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return np.full((2, 3), i, np.float32), np.full((2,), i, np.int32)

    class Shuffling(Batches):
        def on_epoch_end(self):
            pass

    quiet, loud = from_job(Batches(), "train"), from_job(Shuffling(), "train")
    assert isinstance(quiet, EpochBatches) and quiet.steps_per_epoch == 5 and quiet.warning is None
    assert [int(y[0]) for _, y in quiet.dataset(0, 0, 3)] == [3, 4]
    assert "overrides on_epoch_end" in loud.warning
    ds = tf.data.Dataset.range(6).map(lambda i: (tf.fill([2, 3], tf.cast(i, tf.float32)), tf.fill([2], i)))
    plain = from_job(ds, "train")  # resumed from its iterator's state, no warning
    assert plain.steps_per_epoch == 6 and plain.resumes_iterator and plain.warning is None
    assert [int(y[0]) for _, y in plain.dataset(0, 1, 4)] == [4, 5]
    generated = from_job(tf.data.Dataset.from_generator(lambda: iter(range(3)), output_signature=tf.TensorSpec(
        (), tf.int64)).apply(tf.data.experimental.assert_cardinality(3)), "train")
    assert not generated.resumes_iterator and "cannot be checkpointed (PyFunc is stateful)" in generated.warning
    with pytest.raises(ValueError, match=r"infinite tf.data.Dataset \(a repeat\(\) without a count\): model.fit needs"):
        from_job(ds.repeat(), "train")
    unknown = from_job(ds.filter(lambda x, y: True), "train")  # (its first epoch ends where its data does)
    assert unknown.steps_per_epoch is None and unknown.resumes_iterator and unknown.warning is None
    with pytest.raises(ValueError, match="must be trainer.ArrayData"):
        from_job([1, 2, 3], "train")


def test_index_addressable_examples_give_the_same_batches_as_arrays():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(40, 3)).astype(np.float32), np.arange(40, dtype=np.int32)
    arrays = ArrayData(x, y, batch_size=8)
    listed = ArrayData([row for row in x], [np.int32(v) for v in y], batch_size=8)
    for (xa, ya), (xb, yb) in zip(arrays.dataset(3, 1, 2), listed.dataset(3, 1, 2)):
        assert xa.numpy().tobytes() == xb.numpy().tobytes() and np.array_equal(ya, yb)


def test_missing_fashion_mnist_names_every_place_and_three_fixes(tmp_path, monkeypatch):
    import importlib
    import sys
    monkeypatch.syspath_prepend(str(__import__("tests.helpers").helpers.ROOT / "jobs"))
    idx_module = importlib.import_module("fashion_mnist_idx")
    monkeypatch.setattr(idx_module, "DEBIAN_DIR", str(tmp_path / "debian"))
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    monkeypatch.delenv("FASHION_MNIST_DIR", raising=False)
    with pytest.raises(idx_module.DataError) as err:
        idx_module.load(None, allow_download=False)  # (the download itself is never tried here: no network)
    message = str(err.value)
    assert str(tmp_path / "keras") in message and str(tmp_path / "debian") in message
    assert "apt-get install dataset-fashion-mnist" in message and "--data-dir" in message and "(3)" in message
    sys.modules.pop("fashion_mnist_idx", None)


def test_progress_writes_each_line_in_one_write():
    """A log line from another thread must not land between a STEP line and its newline (a
    reader of the merged output would see broken JSON)."""
    from trainer.training.progress import Progress
    from trainer.training.state import TrainerState

    class Stream:
        writes = []

        def write(self, text):
            self.writes.append(text)

        def flush(self):
            pass

    stream, state = Stream(), TrainerState(global_step=3, step_in_epoch=3)
    progress = Progress(state, steps_per_epoch=4, epochs=1, quiet=False, log_every_steps=1, stream=stream,
                        machine=True)
    progress.epoch_begin(0)
    progress.step({"loss": 0.5}, steps_done=1)
    progress.epoch_end(0, {"loss": 0.5})
    assert [w.split(" ")[0] for w in stream.writes] == ["Epoch", "STEP", "EPOCH"]
    assert all(w.endswith("\n") and w.count("\n") == 1 for w in stream.writes)


def test_a_renamed_config_field_is_still_accepted_under_its_old_name():
    """trainer.fit(flush_timeout_s=...) and the config.json of runs written before the rename."""
    from trainer.config import current_names
    assert TrainConfig("r", epochs=1, **current_names({"flush_timeout_s": 3.0})).flush_timeout_seconds == 3.0
    assert current_names({"flush_timeout_s": 3.0, "flush_timeout_seconds": 5.0}) == {"flush_timeout_seconds": 5.0}
    assert current_names({"epochs": 2}) == {"epochs": 2}
