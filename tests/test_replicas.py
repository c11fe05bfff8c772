"""Several devices in one process: MirroredStrategy over logical CPU devices (``--cpu-devices N``),
the path a one-node multi-GPU user takes, run here without GPUs as TensorFlow tests its own
strategies. Real processes and signals; every resumed run ends bitwise equal to the
uninterrupted run with the same replica count."""
import json
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests import helpers

REFERENCE_STEPS = 32  # per epoch: --train-size 1024, batch 32
REFERENCE = [*helpers.TINY[:2], "--train-size", "1024", "--val-size", "128", "--epochs", "2", "--no-tensorboard",
             "--save-every-steps", "10"]


def _user_args(tmp_path, *extra):
    job = helpers.user_job(tmp_path / "elsewhere")
    return ["--job", str(job), "--no-tensorboard", "--save-every-steps", "10", *extra]


def _manifest(run_dir) -> dict:
    from trainer.checkpoint.index import committed
    ckpts = run_dir / "checkpoints"
    return json.loads((ckpts / f"ckpt-{committed(p.name for p in ckpts.iterdir())[0]}.commit.json").read_text())


@pytest.mark.parametrize("job,devices,sig_name,seed", [("reference", 2, "TERM", 1), ("user", 3, "INT", 2)])
def test_replicas_stop_at_random_steps_and_resume_bitwise(tmp_path, uninterrupted, job, devices, sig_name, seed):
    """The reference job (ArrayData, augmentation, BatchNormalization) on 2 replicas, the user's
    job (its own train_step, EpochBatches split across replicas, callbacks, 4 steps per
    execution) on 3."""
    args, steps, epochs = {"reference": (REFERENCE, REFERENCE_STEPS, 2),
                           "user": (_user_args(tmp_path, "--steps-per-execution", "4"), 32, 3)}[job]
    args = [*args, "--cpu-devices", str(devices)]
    reference = uninterrupted(f"{job}-{devices}-replicas", args)
    run_dir = tmp_path / "run"
    helpers.interrupt_randomly(run_dir, args, helpers.SIGNALS[sig_name], random.Random(seed), epochs * steps,
                               interrupts=2)
    assert _manifest(run_dir)["replicas"] == _manifest(reference)["replicas"] == devices
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))
    mine = json.loads((run_dir / "history.json").read_text())["epochs"]
    theirs = json.loads((reference / "history.json").read_text())["epochs"]
    assert [_metrics(e) for e in mine] == [_metrics(e) for e in theirs]  # a resumed epoch's metrics too


def _metrics(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("wall_time", "finished_at")}


FIT_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, keras, tensorflow as tf
    import trainer
    from trainer.cluster.distribute import split_cpu

    tf.config.experimental.enable_op_determinism()
    devices = split_cpu(2)
    rng = np.random.default_rng(3)
    x = rng.normal(size=(320, 8)).astype("float32")
    y = (x[:, :3].argmax(1)).astype("int64")

    def build():
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                  keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy", keras.metrics.SparseTopKCategoricalAccuracy(k=2, name="top2")])
        return model

    keras.utils.set_random_seed(42)
    with tf.distribute.MirroredStrategy(devices).scope():
        model = build()
    fit = model.fit(x[:256], y[:256], batch_size=32, epochs=2, shuffle=False, verbose=0,
                    validation_data=(x[256:], y[256:]))
    ours = trainer.fit(sys.argv[1], model=build, epochs=2, cpu_devices=2, quiet=True, tensorboard=False,
                       export=False, data=(trainer.ArrayData(x[:256], y[:256], batch_size=32, shuffle=False),
                                           (x[256:], y[256:])))
    assert ours.exit_code == 0, ours
    print(json.dumps(fit.history))
    np.savez(sys.argv[2], *[v.numpy() for v in model.weights])
""")


def test_metrics_over_replicas_equal_model_fit_under_the_same_strategy(tmp_path):
    """The same model, batches and MirroredStrategy (2 replicas): per-epoch metrics aggregated over
    the replicas and the final weights equal model.fit's."""
    done = subprocess.run([sys.executable, "-c", FIT_SCRIPT, str(tmp_path / "run"), str(tmp_path / "fit.npz")],
                          cwd=helpers.ROOT, env=helpers.env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MirroredStrategy over 2 CPU devices" in done.stderr
    fit = json.loads(done.stdout.strip().splitlines()[-1])
    ours = json.loads((tmp_path / "run" / "history.json").read_text())["epochs"]
    keys = ["loss", "accuracy", "top2", "val_loss", "val_accuracy", "val_top2"]
    assert set(keys) <= set(fit) and len(ours) == 2
    for epoch in range(2):
        for key in keys:
            assert ours[epoch][key] == pytest.approx(fit[key][epoch], rel=0, abs=1e-6), key
    fit_weights = np.load(tmp_path / "fit.npz")
    ours = [v for k, v in sorted(helpers.latest_variables(tmp_path / "run").items()) if k.startswith("model/")]
    assert sorted(a.tobytes() for a in fit_weights.values()) == sorted(a.tobytes() for a in ours)


SHADOW_SCRIPT = textwrap.dedent("""
    import sys, tempfile
    import keras, tensorflow as tf
    from trainer.checkpoint.store import CheckpointStore
    from trainer.cluster.distribute import split_cpu
    from trainer.storage import open_storage
    from trainer.training.variables import prepare

    devices = split_cpu(3)
    strategy = tf.distribute.MirroredStrategy(devices[1:])  # CPU:1 and CPU:2 stand in for two GPUs
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
        model.compile(optimizer="adam", loss="mse", metrics=["mae"])
        groups = prepare(model, (tf.TensorSpec((8, 4)), tf.TensorSpec((8, 3))), "test", strategy)
    for on_device in (False, True):
        with tf.device(devices[1]):  # the default device, as GPU:0 is where there is one
            store = CheckpointStore(groups, open_storage(tempfile.mkdtemp()), tempfile.mkdtemp(), 3,
                                    on_device=on_device)
        for var in store.snapshot_variables:
            print(on_device, var.device)
        store.close()
""")


def test_save_snapshots_live_in_host_memory_unless_asked(tmp_path):
    done = subprocess.run([sys.executable, "-c", SHADOW_SCRIPT], cwd=helpers.ROOT, env=helpers.env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = [line.split() for line in done.stdout.splitlines()]
    host = {device for on_device, device in rows if on_device == "False"}
    beside = {device for on_device, device in rows if on_device == "True"}
    assert host == {"/job:localhost/replica:0/task:0/device:CPU:0"}, rows
    # beside the variables: the mirrored ones' first copies on CPU:1, replica 1's metric parts on CPU:2
    assert beside == {f"/job:localhost/replica:0/task:0/device:CPU:{i}" for i in (1, 2)}, rows
