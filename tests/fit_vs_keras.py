"""Runs ``model.fit`` and ``trainer.fit`` on the same models and data in one process and prints
what a test compares (``python tests/fit_vs_keras.py RUN_ROOT``; one JSON line ``RESULT {...}``).

Both start from the same initial weights (Keras's session cleared and the trainer's seed set
before the model is built, as the trainer does) and see the same batches (``shuffle=False``).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

import trainer
from tests import vae_job

SEED = 42  # the trainer's default --seed
CLASS_WEIGHT = {0: 1.0, 1: 3.0, 2: 0.25}


def classifier() -> keras.Model:
    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    return model


def fresh(build):
    keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)
    return build()


def arrays(n: int, seed: int):
    x = np.random.default_rng(seed).normal(size=(n, 5)).astype("float32")
    return x, np.digitize(x[:, 0] + 0.5 * x[:, 1], [-0.5, 0.5]).astype("int32")


def keras_fit(build, *args, **kwargs):
    model = fresh(build)
    history = model.fit(*args, verbose=0, shuffle=False, **kwargs)
    return model, history.history


def same_weights(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.dtype == y.dtype and x.tobytes() == y.tobytes() for x, y in zip(a, b))


class Calls(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = []

    def on_train_batch_end(self, batch, logs=None):
        self.seen.append("batch")

    def on_epoch_end(self, epoch, logs=None):
        self.seen.append(f"epoch {epoch} " + ",".join(sorted(logs)))


def main(root: Path) -> dict:
    tf.config.experimental.enable_op_determinism()
    out = {}
    x, y = arrays(200, 0)
    vx, vy = arrays(60, 1)
    common = dict(batch_size=20, epochs=3, validation_data=(vx, vy), validation_freq=2)

    model, fit_history = keras_fit(classifier, x, y, class_weight=CLASS_WEIGHT, **common)
    ours = trainer.fit(str(root / "classifier"), model=classifier, x=x, y=y, shuffle=False,
                       class_weight=CLASS_WEIGHT, quiet=True, tensorboard=False, **common)
    exported = keras.models.load_model(root / "classifier" / "model.keras")
    unweighted, _ = keras_fit(classifier, x, y, **common)
    out["classifier"] = {
        "exit_code": ours.exit_code, "fit_history": fit_history, "our_history": ours.keras_history,
        "val_in_records": ["val_loss" in r for r in ours.history],
        "weights_equal_fit": same_weights(model.get_weights(), exported.get_weights()),
        "class_weight_matters": not same_weights(model.get_weights(), unweighted.get_weights())}
    other = {**CLASS_WEIGHT, 1: 2.0}  # another class_weight for the same run: refused before anything runs
    out["other_class_weight"] = trainer.fit(str(root / "classifier"), model=classifier, x=x, y=y, shuffle=False,
                                            class_weight=other, quiet=True, **common).exit_code
    out["bad_class_weight"] = trainer.fit(str(root / "bad"), model=classifier, x=x, y=y,
                                          class_weight={"cat": 2.0}, quiet=True, **common).exit_code

    split = dict(batch_size=25, epochs=2, validation_split=0.3)  # (the last 60 examples validate)
    model, fit_history = keras_fit(classifier, x, y, **split)
    ours = trainer.fit(str(root / "split"), model=classifier, x=x, y=y, shuffle=False, quiet=True,
                       tensorboard=False, **split)
    exported = keras.models.load_model(root / "split" / "model.keras")
    out["validation_split"] = {"exit_code": ours.exit_code, "fit_history": fit_history,
                               "our_history": ours.keras_history,
                               "weights_equal_fit": same_weights(model.get_weights(), exported.get_weights())}

    out.update(dataset_and_validation_arrays(root, x, y, vx, vy))
    out["dict_x"], out["list_x"] = several_inputs(root, "dict"), several_inputs(root, "list")

    images = vae_job.images(vae_job.Settings(examples=64))
    vae, vae_history = keras_fit(lambda: vae_job.build_model(None), images, batch_size=32, epochs=2)
    calls = Calls()
    ours = trainer.fit(str(root / "vae"), job="tests/vae_job.py", settings={"examples": 64, "shuffle": False},
                       epochs=2, callbacks=[calls], quiet=True, tensorboard=False, export=False)
    out["vae"] = {"exit_code": ours.exit_code, "fit_history": vae_history, "our_history": ours.keras_history,
                  "callbacks_saw": calls.seen}
    return out


def dataset_and_validation_arrays(root: Path, x, y, vx, vy) -> dict:
    """A tf.data pipeline with validation arrays: fit batches the arrays by validation_batch_size,
    else 32; so must trainer.fit (x=dataset) and a job (build_data's (dataset, (vx, vy)))."""
    def dataset():
        return tf.data.Dataset.from_tensor_slices((x, y)).batch(20)
    out = {}
    for name, extra in (("dataset_validation", {}), ("dataset_validation_batch_size", {"validation_batch_size": 7})):
        model, fit_history = keras_fit(classifier, dataset(), epochs=2, validation_data=(vx, vy), **extra)
        as_fit = trainer.fit(str(root / name / "fit"), model=classifier, x=dataset(), epochs=2,
                             validation_data=(vx, vy), quiet=True, tensorboard=False, **extra)
        as_job = trainer.fit(str(root / name / "job"), model=classifier, data=(dataset(), (vx, vy)), epochs=2,
                             quiet=True, tensorboard=False, **extra)
        out[name] = {"exit_codes": [as_fit.exit_code, as_job.exit_code], "fit_history": fit_history,
                     "histories": [as_fit.keras_history, as_job.keras_history]}
    return out


def several_inputs(root: Path, kind: str) -> dict:
    """A dict (``kind`` "dict") or a list ("list") of arrays as x, for a model with two inputs, as
    fit takes them."""
    def build():
        a, b = keras.Input((3,), name="a"), keras.Input((2,), name="b")
        hidden = keras.layers.Dense(8, activation="relu")(keras.layers.Concatenate()([a, b]))
        model = keras.Model({"a": a, "b": b} if kind == "dict" else [a, b],
                            keras.layers.Dense(3, activation="softmax")(hidden))
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        return model
    x, y = arrays(120, 2)
    inputs = {"a": x[:, :3], "b": x[:, 3:]} if kind == "dict" else [x[:, :3], x[:, 3:]]
    common = dict(batch_size=16, epochs=2, validation_split=0.25)
    model, fit_history = keras_fit(build, inputs, y, **common)
    ours = trainer.fit(str(root / kind), model=build, x=inputs, y=y, shuffle=False, quiet=True,
                       tensorboard=False, **common)
    exported = keras.models.load_model(root / kind / "model.keras")
    return {"exit_code": ours.exit_code, "fit_history": fit_history, "our_history": ours.keras_history,
            "weights_equal_fit": same_weights(model.get_weights(), exported.get_weights())}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(Path(sys.argv[1]))))
