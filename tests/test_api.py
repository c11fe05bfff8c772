"""``trainer.fit`` from Python (a notebook, a script): a job or a model + data, resumed
in the same process, returning the history and metrics."""
import json
import subprocess
import sys

from tests import helpers

SCRIPT = """
import json, os, signal, sys
import keras, numpy as np
import trainer

run = sys.argv[1]
first = trainer.fit(run + "/digits", job="jobs/digits.py", epochs=2, settings={"hidden": 32}, quiet=True,
                    tensorboard=False)
again = trainer.fit(run + "/digits", job="jobs/digits.py", epochs=3, settings={"hidden": 32}, quiet=True,
                    tensorboard=False)

def model():
    m = keras.Sequential([keras.Input((5,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dropout(0.5),
                          keras.layers.Dense(2, activation="softmax")])
    m.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return m

x = np.random.default_rng(0).normal(size=(200, 5)).astype("float32")
y = (x[:, 0] > 0).astype("int32")
own = trainer.fit(run + "/own", model=model, data=trainer.ArrayData(x, y, batch_size=20), epochs=2,
                  quiet=True, tensorboard=False)
class SignalAtEpochEnd(keras.callbacks.Callback):
    # SIGTERM to this process at the end of epoch `at` (0-based), before the run decides on it
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at:
            os.kill(os.getpid(), signal.SIGTERM)

stops = [trainer.fit(run + f"/stop-{at}", model=model, data=trainer.ArrayData(x, y, batch_size=20), epochs=2,
                     callbacks=[SignalAtEpochEnd(at)], quiet=True, tensorboard=False) for at in (0, 1)]
print("RESULT " + json.dumps({
    "stops": [[r.exit_code, r.completed, [e["epoch"] for e in r.history]] for r in stops],
    "first": [first.exit_code, len(first.history), first.final_metrics.get("epoch")],
    "again": [again.exit_code, [e["epoch"] for e in again.history], sorted(again.final_metrics)],
    "own": [own.exit_code, own.completed, [e["epoch"] for e in own.history], own.state.global_step]}))
"""


def test_fit_trains_resumes_in_the_same_process_and_returns_the_history(tmp_path):
    result = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=helpers.ROOT, env=helpers.env(),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    out = json.loads(result.stdout.split("RESULT ", 1)[1])
    assert out["first"] == [0, 2, 2]
    assert out["again"][0] == 0 and out["again"][1] == [1, 2, 3]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr", "epoch"} <= set(out["again"][2])
    assert "resumed from" in result.stderr and "at epoch 3 step 0/47" in result.stderr
    assert out["own"] == [0, True, [1, 2], 20]
    # A stop signal at an epoch's end stops the run there, unless that was the last epoch: then the
    # run is complete and ends as such (exit 0, not a requeue that only finds it complete).
    assert out["stops"] == [[143, False, [1]], [0, True, [1, 2]]]
