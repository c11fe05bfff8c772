"""Callbacks resume with their state: a job with every stateful Keras callback (and one of the
user's, with the get_state/set_state protocol), stopped by SIGTERM at random epoch ends and
mid-epoch, then rolled back to a milestone, ends exactly like the uninterrupted run: every
variable bitwise, the learning rate of every epoch, the early-stop epoch, and the callbacks'
files byte for byte. The stops land where the job's data is held at a gate, so no assertion
depends on the machine's speed."""
import json
import random
from pathlib import Path

import pytest

from tests import helpers

JOB = str(helpers.ROOT / "tests" / "callbacks_job.py")
STEPS = 16  # per epoch
STOPPED_AFTER = 7  # epochs: EarlyStopping(patience=6) with only epoch 1 an improvement
# ReduceLROnPlateau(patience=2) halves the rate after epochs 3 and 5
LEARNING_RATES = [0.05] * 3 + [0.025] * 2 + [0.0125] * 2


def _args(out: Path, *extra) -> list[str]:
    return ["--job", JOB, "--no-tensorboard", "--save-every-steps", "5", "--keep-every-epochs", "2",
            "--out", str(out), *extra]


@pytest.fixture(scope="module")
def reference(uninterrupted, tmp_path_factory):
    out = tmp_path_factory.mktemp("callbacks-reference-out")
    return uninterrupted("callbacks", _args(out)), out


def _stop_at(run_dir: Path, args: list[str], gate: helpers.Gate, target: int) -> tuple[str, tuple]:
    """Train with the data held after ``target`` batches, SIGTERM, then let it go: the stop lands
    at step ``target``'s boundary (at an epoch end if that is one) or one step later."""
    proc = helpers.start(["train", "--run-dir", str(run_dir), *args, "--gate", str(gate.path),
                          "--log-every-steps", "1"])
    out = helpers.gated_stop(proc, gate, target)
    stop = helpers.stop_of(out)
    assert stop[3] in (target, target + 1), out
    return out, stop


def _files(out: Path) -> dict[str, bytes]:
    """The callbacks' files, except TensorBoard's (their names hold the time; see _events)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and "tb" not in p.relative_to(out).parts}


def _events(out: Path) -> list[tuple]:
    """Every TensorBoard event (folder, tag, step, value), sorted: missing or repeated ones show."""
    import tensorflow as tf
    events = []
    for path in sorted((out / "tb").rglob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:
                events.append((path.parent.name, value.tag, event.step, value.tensor.SerializeToString()))
    return sorted(events)


def _epochs(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())["epochs"]


def test_callbacks_resume_exactly_after_stops_and_a_rollback(reference, tmp_path):
    ref_dir, ref_out = reference
    ref_epochs = _epochs(ref_dir)
    assert [e["epoch"] for e in ref_epochs] == list(range(1, STOPPED_AFTER + 1))
    assert [e["lr"] for e in ref_epochs] == pytest.approx(LEARNING_RATES, rel=1e-6)
    assert (ref_out / "log.csv").read_text().count("\n") == 1 + STOPPED_AFTER  # the header and a row per epoch

    out, run_dir = tmp_path / "out", tmp_path / "run"
    args = _args(out)
    gate = helpers.Gate(tmp_path / "gate")
    rng = random.Random(7)
    # a stop at a random epoch end, then one at a random step in a later epoch (before the early stop)
    end = STEPS * rng.randint(1, 3)
    middle = rng.choice([s for s in range(end + 2, STEPS * STOPPED_AFTER - 1) if s % STEPS])
    stops = []
    for target in (end, middle):
        output, stop = _stop_at(run_dir, args, gate, target)
        if stops:  # resumed exactly where the previous start stopped
            e, s, n, g, _ = stops[-1]
            assert f"at epoch {e} step {s}/{n} (global step {g})" in output, output
        assert output.count("has instance state") == 1 and "callback Unkept has instance state" in output
        stops.append(stop)
    final = helpers.run(["train", "--run-dir", str(run_dir), *args])
    assert final.returncode == 0, final.stdout + final.stderr
    assert f"training complete: {STOPPED_AFTER} epochs" in final.stdout
    _assert_same_as_reference(run_dir, out, ref_dir, ref_out, events=True)

    # back to the epoch-4 milestone and on: the callbacks continue from that snapshot
    again = helpers.run(["train", "--run-dir", str(run_dir), *args, "--from", "epoch-4"])
    assert again.returncode == 0, again.stdout + again.stderr
    assert "rolled back to" in again.stderr and "at epoch 5 step 0/16" in again.stderr
    _assert_same_as_reference(run_dir, out, ref_dir, ref_out, events=False)


def _assert_same_as_reference(run_dir, out, ref_dir, ref_out, events: bool) -> None:
    helpers.assert_bitwise_equal(helpers.latest_variables(ref_dir), helpers.latest_variables(run_dir))
    mine, theirs = _epochs(run_dir), _epochs(ref_dir)
    assert [(e["epoch"], e["lr"], e["loss"], e["val_loss"]) for e in mine] == \
        [(e["epoch"], e["lr"], e["loss"], e["val_loss"]) for e in theirs]
    files, ref_files = _files(out), _files(ref_out)
    tally, ref_tally = files.pop("tally.txt").decode(), ref_files.pop("tally.txt").decode()
    assert files.keys() == ref_files.keys()
    for name in files:  # the CSV, the best model, every 7th batch's weights: byte for byte
        assert files[name] == ref_files[name], name
    # the user's own callback kept its counts (its file is the user's: a rollback appends to it)
    assert tally.splitlines()[-STOPPED_AFTER + 4:] == ref_tally.splitlines()[-STOPPED_AFTER + 4:]
    if events:
        assert tally == ref_tally
        assert _events(out) == _events(ref_out)
    _assert_model_file_holds_best_weights(run_dir, ref_dir)


def _assert_model_file_holds_best_weights(run_dir, ref_dir) -> None:
    """EarlyStopping(restore_best_weights=True) put the same (best) weights into model.keras."""
    import keras
    import numpy as np
    a = keras.models.load_model(run_dir / "model.keras").get_weights()
    b = keras.models.load_model(ref_dir / "model.keras").get_weights()
    assert len(a) == len(b) and all(np.asarray(x).tobytes() == np.asarray(y).tobytes() for x, y in zip(a, b))


# -- the adapters, in process (a seam: no training; the states go through JSON as in a checkpoint) --

def _model():
    import keras
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _resumed(make, model, drive, mid_epoch=False, lost=None):
    """A callback driven by ``drive``, its state saved (then ``lost``: what it did after the
    checkpoint); a new one (as a new process builds it) restored from that state; (first, second)."""
    import keras

    from trainer.training.callback_state import CallbackStates
    first = make()
    states = CallbackStates([first], model)
    callbacks = keras.callbacks.CallbackList([first], model=model)
    states.train_begin(callbacks, mid_epoch=False)
    drive(first)
    saved = json.loads(json.dumps(states.capture()))
    if lost:
        lost(first)
    second = make()
    again = CallbackStates([second], model)
    for new, old in zip(again.variables.values(), states.variables.values()):
        new.assign(old)  # what the checkpoint restore does
    again.resume_from(saved)
    again.train_begin(keras.callbacks.CallbackList([second], model=model), mid_epoch=mid_epoch)
    return first, second


def test_reduce_lr_on_plateau_keeps_its_cooldown():
    import keras
    model = _model()

    def drive(cb):
        for epoch, loss in enumerate([1.0, 1.0]):  # patience 1: lowered after epoch 2, cooldown 2 begins
            cb.on_epoch_end(epoch, {"loss": loss})
    make = lambda: keras.callbacks.ReduceLROnPlateau(monitor="loss", patience=1, cooldown=2, factor=0.5)
    first, second = _resumed(make, model, drive)
    assert (second.wait, second.best, second.cooldown_counter) == (first.wait, first.best, 2)


def test_early_stopping_best_weights_go_through_checkpoint_variables():
    import keras
    import numpy as np
    model = _model()

    def drive(cb):
        cb.on_epoch_end(0, {"val_loss": 1.0})
        best = [w.copy() for w in model.get_weights()]
        model.set_weights([w + 1 for w in best])
        cb.on_epoch_end(1, {"val_loss": 2.0})
        drive.best = best
    make = lambda: keras.callbacks.EarlyStopping(patience=5, restore_best_weights=True)
    _, second = _resumed(make, model, drive)
    assert (second.wait, second.best, second.best_epoch) == (1, 1.0, 0)
    assert [a.tobytes() for a in second.best_weights] == [np.asarray(b).tobytes() for b in drive.best]


def test_csv_logger_cuts_off_a_row_written_after_the_checkpoint(tmp_path):
    """The kill comes after epoch 2's row was written and before the next commit: the resumed
    logger writes that row again, once, after one header: the file of an uninterrupted logger."""
    import keras
    model = _model()

    def write(cb, epochs):
        for epoch in epochs:
            cb.on_epoch_end(epoch, {"loss": 1.0 / (epoch + 1)})

    whole = keras.callbacks.CSVLogger(str(tmp_path / "whole.csv"))
    whole.set_model(model)
    whole.on_train_begin()
    write(whole, [0, 1])
    whole.on_train_end()
    path = tmp_path / "log.csv"
    _, second = _resumed(lambda: keras.callbacks.CSVLogger(str(path)), model, lambda cb: write(cb, [0]),
                         lost=lambda cb: (write(cb, [1]), cb.csv_file.close()))
    write(second, [1])
    second.on_train_end()
    assert path.read_bytes() == (tmp_path / "whole.csv").read_bytes()


def test_learning_rate_scheduler_is_not_applied_twice_in_a_resumed_epoch():
    import keras
    model = _model()
    make = lambda: keras.callbacks.LearningRateScheduler(lambda epoch, lr: lr * 0.5)
    _, second = _resumed(make, model, lambda cb: cb.on_epoch_begin(0), mid_epoch=True)
    lr = float(model.optimizer.learning_rate.numpy())
    second.on_epoch_begin(0)  # the resumed epoch: already scheduled
    assert float(model.optimizer.learning_rate.numpy()) == lr
    second.on_epoch_begin(1)
    assert float(model.optimizer.learning_rate.numpy()) == lr * 0.5


def test_backup_and_restore_is_refused_and_bad_protocol_state_named(tmp_path):
    import keras

    from trainer.training.callback_state import CallbackStateError, CallbackStates

    class Bad(keras.callbacks.Callback):
        def get_state(self):
            return {"when": object()}

        def set_state(self, state):
            pass
    with pytest.raises(CallbackStateError, match="BackupAndRestore"):
        CallbackStates([keras.callbacks.BackupAndRestore(str(tmp_path))], _model())
    with pytest.raises(CallbackStateError, match=r"Bad.get_state\(\) must return a dict of JSON values"):
        CallbackStates([Bad()], _model())


def test_only_callbacks_that_look_stateful_are_warned_about(caplog):
    import keras

    from trainer.training.callback_state import CallbackStates

    class Settings(keras.callbacks.Callback):
        def __init__(self, path, every=2):
            super().__init__()
            self.path, self._every = path, every

    class Counting(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.count = 0
    with caplog.at_level("WARNING", logger="trainer"):
        CallbackStates([Settings("x"), Counting(), keras.callbacks.EarlyStopping()], _model())
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and warnings[0].startswith("callback Counting has instance state (count)"), warnings
    assert "its state restarts at each resume" in warnings[0]
