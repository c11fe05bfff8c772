"""``compile(steps_per_execution=N)``: N steps per ``tf.function`` call, as in ``fit``.

Executions are aligned to the epoch's start; a stop lands on an execution
boundary (a multiple of N steps into the epoch, or the epoch's end); a run
stopped at random moments and resumed ends bitwise equal to the uninterrupted
run with the same N, which is bitwise equal to the run with N = 1; batch
callbacks get the batch numbers ``fit`` passes. (Two workers:
tests/test_multiworker.py.)"""
import json
import random
import subprocess
import sys

import numpy as np
import pytest

from tests import helpers
from trainer.training import execution

N = 8


def _executions(start: int, steps: int, n: int) -> list[tuple[int, int]]:
    """(first step, steps) of every execution of an epoch entered at ``start``."""
    out, step = [], start
    while step < steps:
        out.append((step, execution.length(step, steps, n)))
        step += out[-1][1]
    return out


@pytest.mark.filterwarnings("ignore:Your input ran out of data")
@pytest.mark.parametrize("steps,n", [(1, 1), (10, 1), (10, 4), (47, 8), (64, 8), (5, 32), (625, 32)])
def test_executions_realign_after_any_resume_and_number_batches_as_fit_does(steps, n):
    from keras.src.trainers.epoch_iterator import EpochIterator

    whole = _executions(0, steps, n)
    keras_numbers = [(b, e) for b, e, _ in EpochIterator(x=np.zeros((steps, 1)), batch_size=1, shuffle=False,
                                                          steps_per_execution=n).enumerate_epoch()]
    assert [execution.batch_numbers(first, n) for first, _ in whole] == keras_numbers
    ends = [first + count for first, count in whole]
    for start in range(steps):
        resumed = _executions(start, steps, n)
        assert sum(c for _, c in resumed) == steps - start and all(1 <= c <= n for _, c in resumed)
        assert [first + count for first, count in resumed] == [e for e in ends if e > start]


def test_crossed_is_every_nth_step_for_single_steps_and_never_skips_a_multiple():
    for every in (1, 3, 8):
        assert [g for g in range(1, 40) if execution.crossed(g - 1, g, every)] == list(range(every, 40, every))
        for before in range(30):
            for count in range(1, 12):
                passed = any(g % every == 0 for g in range(before + 1, before + count + 1))
                assert execution.crossed(before, before + count, every) == passed
    assert not execution.crossed(0, 100, None)


@pytest.mark.parametrize("value", ["auto", 0, 2.5, True])
def test_a_bad_steps_per_execution_is_a_clear_error(value):
    import keras

    from trainer.training.variables import ModelError, check_model
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse", steps_per_execution=value)
    with pytest.raises(ModelError, match=r"job j: model.compile\(steps_per_execution=.*expected a positive integer"):
        check_model(model, "j")


def assert_on_execution_boundary(stop, n):
    """``stop``: the stop line's numbers (helpers.stop_of)."""
    _, step, steps, _, _ = stop
    assert step % n == 0 or step == steps, stop


def test_random_stops_land_on_execution_boundaries_and_resume_bitwise(tmp_path, uninterrupted):
    """Digits: 47 steps per epoch, so every epoch ends with a shorter execution (7 steps)."""
    args = [*helpers.DIGITS, "--steps-per-execution", str(N)]
    reference = uninterrupted(f"digits-spe{N}", args)
    run_dir = tmp_path / "run"
    stops = helpers.interrupt_randomly(run_dir, args, helpers.SIGNALS["TERM"], random.Random(11), 3 * helpers.DIGITS_STEPS,
                                interrupts=2)
    for stop in stops:
        assert_on_execution_boundary(stop, N)
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))
    # one step per execution gives the very same run (the same ops in the same order)
    helpers.assert_bitwise_equal(helpers.latest_variables(uninterrupted("digits", helpers.DIGITS)),
                                 helpers.latest_variables(reference))


CALLBACKS_SCRIPT = """
import json, sys
import keras, numpy as np
import trainer

class Record(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.calls = []
    def on_train_batch_begin(self, batch, logs=None): self.calls.append(["train_begin", batch])
    def on_train_batch_end(self, batch, logs=None): self.calls.append(["train_end", batch, sorted(logs)])
    def on_test_batch_begin(self, batch, logs=None): self.calls.append(["test_begin", batch])
    def on_test_batch_end(self, batch, logs=None): self.calls.append(["test_end", batch])

def model():
    keras.utils.set_random_seed(0)
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"),
                          keras.layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"], steps_per_execution=4)
    return m

x = np.random.default_rng(0).normal(size=(220, 5)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
train, val = trainer.ArrayData(x, y, batch_size=20), trainer.ArrayData(x[:120], y[:120], batch_size=20, shuffle=False)
ours, theirs = Record(), Record()
trainer.fit(sys.argv[1], model=model, data=(train, val), callbacks=[ours], epochs=1, quiet=True,
            tensorboard=False)
fitted = model()
fitted.fit(train.dataset(0, 0, 0), validation_data=val.dataset(0, 0, 0, training=False), epochs=1, verbose=0,
           callbacks=[theirs])
print("RESULT " + json.dumps({"ours": ours.calls, "fit": theirs.calls}))
"""


def test_batch_callbacks_get_what_fit_passes_once_per_execution(tmp_path):
    """11 training batches and 6 validation batches at 4 steps per execution: shorter last executions."""
    result = subprocess.run([sys.executable, "-c", CALLBACKS_SCRIPT, str(tmp_path / "run")], cwd=helpers.ROOT,
                            env=helpers.env(), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    calls = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert calls["ours"] == calls["fit"]
    assert [c[1] for c in calls["fit"] if c[0].startswith("train")] == [0, 3, 4, 7, 8, 11]



def test_a_run_stopped_anywhere_resumes_with_another_n_realigned_and_bitwise(tmp_path, uninterrupted):
    """Stopped at any step with N = 1, resumed with N = 8: the resumed epoch's first execution
    runs up to the next multiple of 8, then every execution ends where the N = 8 run's do."""
    run_dir = tmp_path / "run"
    base = ["train", "--run-dir", str(run_dir), *helpers.DIGITS]
    code, out = helpers.interrupt_at_step(base, helpers.SIGNALS["TERM"], random.Random(7).randint(1, 2 * helpers.DIGITS_STEPS))
    rest = helpers.run([*base, "--steps-per-execution", str(N), "--log-every-steps", "1"])
    assert rest.returncode == 0, rest.stdout + rest.stderr
    lines = [json.loads(line[5:]) for line in rest.stdout.splitlines() if line.startswith("STEP ")]
    if code != 0 and lines:  # (0, or no line: the first run ended before the signal landed)
        _, start, steps, global_step, _ = helpers.stop_of(out)
        # (stopped after an epoch's last step: the resumed run goes on with the next epoch)
        first = execution.length(start, steps, N) or execution.length(0, steps, N)
        assert lines[0]["global_step"] - global_step == first, (start, lines[0])
        assert all(r["step"] % N == 0 or r["step"] == steps for r in lines), lines
        assert lines[-1]["global_step"] == 3 * helpers.DIGITS_STEPS
    helpers.assert_bitwise_equal(helpers.latest_variables(uninterrupted("digits", helpers.DIGITS)),
                                 helpers.latest_variables(run_dir))
