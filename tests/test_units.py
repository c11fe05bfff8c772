"""Unit tests of the pure pieces: override parser, config, pruning rules,
pipeline purity, the signal seam."""
import math
import signal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainer import checkpoints_index as idx
from trainer import exitcodes, lr_override, pipeline
from trainer.config import ConfigError, TrainConfig
from trainer.signals import StopRequest


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
    ("epochs", 0, "--epochs"), ("lr", float("nan"), "--lr"), ("max_to_keep", 1, "--max-to-keep"),
    ("filters", (4,), "--filters"), ("stages", (), "--stages"), ("momentum", 1.0, "--momentum"),
    ("train_size", 10, "--train-size"), ("save_every_seconds", 0, "--save-every-seconds"),
    ("flush_timeout_s", 0, "--flush-timeout-s"), ("flush_timeout_s", float("inf"), "--flush-timeout-s")])
def test_config_errors_name_the_flag(field, value, flag):
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_preset("runs/x", "small", **{field: value})
    assert str(err.value).startswith(flag)


def test_presets():
    ref = TrainConfig.from_preset("r", "reference")
    assert (ref.stages, ref.filters, ref.weight_decay, ref.lr, ref.batch_size, ref.image_size) == \
        ((9, 9, 9), (64, 64, 128, 256), 1e-4, 0.1, 128, 32)
    assert ref.train_size is None and ref.augment
    assert TrainConfig.from_preset("r", "small", train_size="all").train_size is None
    with pytest.raises(ConfigError, match="--preset"):
        TrainConfig.from_preset("r", "huge")


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
def test_epoch_plan_is_a_pure_function_of_seed_epoch_position(seed, epoch, n, batch):
    a = pipeline.epoch_plan(seed, epoch, n, 32, True)
    b = pipeline.epoch_plan(seed, epoch, n, 32, True)
    assert all(np.array_equal(getattr(a, f), getattr(b, f)) for f in ("order", "flip", "dx", "dy"))
    assert sorted(a.order) == list(range(n))
    assert np.abs(a.dx).max() <= 3 and np.abs(a.dy).max() <= 3
    assert pipeline.steps_per_epoch(n, batch) * batch >= n > (pipeline.steps_per_epoch(n, batch) - 1) * batch


def test_resumed_dataset_equals_the_tail_of_the_full_one():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (100, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 100, dtype=np.uint8)
    kw = dict(seed=7, epoch=3, batch_size=16, image_size=32, augment=True)
    full = list(pipeline.train_dataset(images, labels, start_step=0, **kw))
    tail = list(pipeline.train_dataset(images, labels, start_step=4, **kw))
    assert len(full) == 7 and len(tail) == 3
    for (xa, ya), (xb, yb) in zip(full[4:], tail):
        assert xa.numpy().tobytes() == xb.numpy().tobytes() and np.array_equal(ya, yb)
    other_epoch = list(pipeline.train_dataset(images, labels, start_step=0, **{**kw, "epoch": 4}))
    assert not np.array_equal(full[0][1], other_epoch[0][1])


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
    assert signal.getsignal(signal.SIGUSR2) == before


def test_exit_codes():
    assert exitcodes.interrupted(signal.SIGTERM) == 143 and exitcodes.interrupted(signal.SIGUSR1) == 138
    assert exitcodes.is_interrupted(130) and not exitcodes.is_interrupted(exitcodes.CRASH)
