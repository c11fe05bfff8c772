"""Runs ``model.fit`` and ``trainer.fit`` on the TFRecord pipeline of unknown length of
``tests/unknown_length_job.py`` (training and validation data) in one process, with one and with
three steps per execution, and prints what a test compares
(``python tests/unknown_length_vs_fit.py FILES RUN_ROOT``; one JSON line ``RESULT {...}``).

Both build the data, then the model, after clearing Keras's session and setting the trainer's
seed, as the trainer does: the same shuffle seeds, the same initial weights."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import tensorflow as tf

import trainer
from tests import unknown_length_job as job
from tests.fit_vs_keras import SEED, same_weights

EPOCHS = 3


def keras_fit(settings: job.Settings):
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    train, validation = job.build_data(settings)
    model = job.build_model(settings)
    history = model.fit(train, validation_data=validation, epochs=EPOCHS, verbose=0)
    return model, history.history, int(train.cardinality())


def main(files: str, root: Path) -> dict:
    tf.config.experimental.enable_op_determinism()
    out = {}
    for n in (1, 3):
        settings = job.Settings(files=files, steps_per_execution=n)
        model, fit_history, cardinality = keras_fit(settings)
        ours = trainer.fit(str(root / f"spe{n}"), job="tests/unknown_length_job.py",
                           settings={"files": files, "steps_per_execution": n}, epochs=EPOCHS, quiet=True,
                           tensorboard=False)
        exported = keras.models.load_model(root / f"spe{n}" / "model.keras")
        out[n] = {"exit_code": ours.exit_code, "cardinality": cardinality, "fit_history": fit_history,
                  "our_history": ours.keras_history, "global_steps": [r["global_step"] for r in ours.history],
                  "weights_equal_fit": same_weights(model.get_weights(), exported.get_weights())}
    return out


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(sys.argv[1], Path(sys.argv[2]))))
