"""Unit tests of the fit arguments a job may give: class_weight's per-example weights against
Keras's own rule, and the checks of class_weight and validation_freq."""
import re

import numpy as np
import pytest
from keras.src.trainers.data_adapters.data_adapter_utils import class_weight_to_sample_weights

from trainer.data.sources import SINGLE, ArrayData
from trainer.training import fit_options
from trainer.training.loop import _should_validate

WEIGHTS = {0: 0.5, 2: 4.0, 3: 1.25}  # class 1 and classes above 3 are not listed: 1.0


def _weights_of(y) -> np.ndarray:
    x = np.zeros((len(y), 2), np.float32)
    source = fit_options.ClassWeighted(ArrayData(x, y, batch_size=7, shuffle=False), WEIGHTS)
    return np.concatenate([w.numpy() for _, _, w in source.dataset(0, 0, 0, SINGLE)])


@pytest.mark.parametrize("labels", ["sparse int", "sparse float (n, 1)", "one-hot", "soft labels"])
def test_class_weight_gives_kerass_sample_weights(labels):
    classes = np.random.default_rng(0).integers(0, 6, size=30)
    y = {"sparse int": classes.astype(np.int32),
         "sparse float (n, 1)": classes.reshape(-1, 1).astype(np.float32),
         "one-hot": np.eye(6, dtype=np.float32)[classes],
         "soft labels": np.random.default_rng(1).dirichlet(np.ones(6), size=30).astype(np.float32)}[labels]
    expected = class_weight_to_sample_weights(y, WEIGHTS)
    ours = _weights_of(y)
    assert ours.dtype == expected.dtype and ours.tobytes() == expected.tobytes()


def test_class_weight_applies_to_training_batches_only():
    x, y = np.zeros((4, 2), np.float32), np.array([0, 2, 3, 1], np.int32)
    source = fit_options.ClassWeighted(ArrayData(x, y, batch_size=4, shuffle=False), WEIGHTS)
    assert len(next(iter(source.dataset(0, 0, 0, SINGLE, training=False)))) == 2


def test_class_weight_on_a_plain_pipeline_keeps_its_iterator_checkpointed():
    """On a tf.data pipeline the weights go into the pipeline: the run still restores its iterator
    (no warning, no skipping), and a restored one goes on with the same weighted batches."""
    import tensorflow as tf

    from trainer.data.accepted import from_job
    classes = np.random.default_rng(0).integers(0, 6, size=40).astype(np.int32)
    x = np.arange(40, dtype=np.float32).reshape(-1, 1)

    def weighted():
        tf.random.set_seed(3)
        pipeline = tf.data.Dataset.from_tensor_slices((x, classes)).shuffle(40).batch(8)
        source = fit_options.class_weighted(from_job(pipeline, "train"), WEIGHTS)
        source.bind(tf.distribute.get_strategy())
        return source

    def take(iterator, n):
        return [tuple(t.numpy() for t in next(iterator)) for _ in range(n)]
    source = weighted()
    assert source.resumes_iterator and source.warning is None
    iterator = source.iterator(0, 0)
    first = take(iterator, 2)
    source.capture()
    rest = take(iterator, 3)
    resumed = weighted()
    resumed.state.assign(source.state)
    assert [[a.tobytes() for a in b] for b in take(resumed.iterator(0, 2), 3)] == [[a.tobytes() for a in b]
                                                                                 for b in rest]
    for batch_x, batch_y, weights in first + rest:
        assert weights.tobytes() == class_weight_to_sample_weights(batch_y, WEIGHTS).tobytes()
        assert len(batch_x) == len(batch_y) == len(weights)


@pytest.mark.parametrize("kwargs, needle", [
    ({"class_weight": {"cat": 1.0}}, "keys must be class ids"),
    ({"class_weight": {0: float("nan")}}, "class_weight[0] must be a finite number"),
    ({"class_weight": {}}, "non-empty dict"),
    ({"validation_freq": 0}, "validation_freq must be a positive integer"),
    ({"validation_freq": [1, "2"]}, "validation_freq must be a positive integer"),
    ({"batch_size": 32}, "batch_size cannot be given here"),
    ({"validation_batch_size": 0}, "validation_batch_size must be a positive integer"),
])
def test_bad_fit_arguments_are_named(kwargs, needle):
    with pytest.raises(fit_options.FitOptionError, match="job j: fit_kwargs") as err:
        fit_options.from_kwargs(kwargs, "job j: fit_kwargs")
    assert needle in str(err.value)


def test_validation_freq_picks_the_epochs_fit_validates():
    assert [e for e in range(9) if _should_validate(e, 3)] == [2, 5, 8]
    assert [e for e in range(9) if _should_validate(e, fit_options.from_kwargs(
        {"validation_freq": [1, 4]}, "x").validation_freq)] == [0, 3]


def test_only_class_weight_is_identity():
    assert fit_options.from_kwargs({"class_weight": {1: 2, 0: 1}, "validation_freq": 5}, "x").identity() == \
        {"class_weight": {"0": 1.0, "1": 2.0}}
    assert fit_options.FitOptions().identity() == {"class_weight": None}


@pytest.mark.parametrize("structure, needle", [
    ((np.zeros((4, 2), np.float32), np.zeros(4, np.int32), np.ones(4, np.float32)), "have 3 part(s)"),
    ((np.zeros((4, 2), np.float32),), "have 1 part(s)"),
    ((np.zeros((4, 2), np.float32), np.zeros((4, 3, 2), np.float32)), "one class per example"),
])
def test_class_weight_refuses_batches_fit_refuses(structure, needle):
    source = fit_options.ClassWeighted(ArrayData(*structure, batch_size=2), WEIGHTS)
    with pytest.raises(fit_options.FitOptionError) as err:
        source.dataset(0, 0, 0, SINGLE)
    assert needle in str(err.value)


def _small_model():
    import keras
    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    model.compile(loss="mse")
    return model


@pytest.mark.parametrize("arguments, needle", [
    (lambda tf: {"x": (b for b in [])}, "Give data=trainer.EpochBatches("),
    (lambda tf: {"x": tf.data.Dataset.from_tensors((np.zeros((1, 2)), np.zeros(1))), "validation_split": 0.2},
     "give validation_data=(x_val, y_val) or a validation dataset instead"),
    (lambda tf: {"x": tf.data.Dataset.from_tensors((np.zeros((1, 2)), np.zeros(1))), "y": np.zeros(1)},
     "put them into its batches"),
    (lambda tf: {"x": ArrayData(np.zeros((2, 2)), np.zeros(2), batch_size=1)}, "give it as data="),
    (lambda tf: {"x": {1, 2}, "y": np.zeros(2)}, "x is a set: give arrays (NumPy, tf.Tensor, or a dict or list"),
    (lambda tf: {"x": np.zeros((4, 2)), "y": np.zeros(4), "verbose": 3}, "verbose must be 'auto', 0, 1 or 2"),
])
def test_fit_forms_a_run_cannot_take_are_refused_with_what_to_write(tmp_path, arguments, needle):
    """Each refusal says what to give instead, and nothing is written."""
    import tensorflow as tf

    import trainer
    with pytest.raises(ValueError, match=re.escape(needle)):
        trainer.fit(str(tmp_path / "run"), model=_small_model, epochs=1, **arguments(tf))
    assert not (tmp_path / "run").exists()


def test_validation_data_of_another_shape_is_refused_as_a_bad_job(tmp_path, caplog):
    import trainer
    result = trainer.fit(str(tmp_path / "run"), model=_small_model, epochs=1, x=np.zeros((4, 2)), y=np.zeros(4),
                         validation_data=(1, 2, 3, 4))
    assert result.exit_code == 2 and not (tmp_path / "run").exists()
    assert "must be (x_val, y_val) or (x_val, y_val, val_sample_weight), as for model.fit; got 4 items" in caplog.text


def test_pandas_and_lists_of_arrays_become_what_fit_reads():
    from trainer.data.accepted import inputs_as_fit_reads_them

    class DataFrame:  # stands in for pandas's (not installed here): fit reads it as its NumPy array
        def __init__(self, values):
            self.values, self.shape = values, values.shape

        def to_numpy(self):
            return self.values
    DataFrame.__module__ = "pandas.core.frame"
    a, b = np.zeros((3, 2)), np.ones((3, 1))
    assert inputs_as_fit_reads_them(DataFrame(a)) is a
    assert inputs_as_fit_reads_them([a, DataFrame(b)]) == (a, b)
    assert inputs_as_fit_reads_them([1, 2]) == [1, 2]  # a list of examples stays one array
