"""Mixed precision and XLA, the first things GPU users turn on, resume bitwise: real SIGTERMs at
random steps, every variable (the LossScaleOptimizer's dynamic scale and its step counter
among them) equal to the uninterrupted run's."""
import random
import signal

import pytest

from tests import helpers, precision_job

STEPS = 16  # per epoch: 512 examples, batch 32


def _args(*variant):
    return ["--job", str(helpers.ROOT / "tests" / "precision_job.py"), *variant, "--no-tensorboard", "--no-export",
            "--save-every-steps", "5"]


def _xla_available() -> bool:
    model = precision_job.build_model(precision_job.Settings(jit=True))
    return bool(model.jit_compile)


@pytest.mark.parametrize("variant,interrupts,seed", [
    (("--policy", "mixed_float16"), 2, 1),
    (("--policy", "mixed_bfloat16", "--jit"), 2, 2),
])
def test_precision_and_xla_resume_bitwise(tmp_path, uninterrupted, variant, interrupts, seed):
    if "--jit" in variant and not _xla_available():
        pytest.skip("Keras declined jit_compile=True for this model on this TensorFlow (no XLA support)")
    args = _args(*variant)
    reference = uninterrupted("precision" + "".join(variant), args)
    run_dir = tmp_path / "run"
    helpers.interrupt_randomly(run_dir, args, signal.SIGTERM, random.Random(seed), precision_job.EPOCHS * STEPS,
                               interrupts=interrupts)
    theirs, mine = helpers.latest_variables(reference), helpers.latest_variables(run_dir)
    helpers.assert_bitwise_equal(theirs, mine)
    if variant == ("--policy", "mixed_float16"):
        assert any("scale" in key for key in mine), sorted(mine)  # the dynamic loss scale is checkpointed
