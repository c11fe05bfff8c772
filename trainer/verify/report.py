"""The verdict when the runs differ, and what the runs' output says the likely cause is."""
from __future__ import annotations

from .messages import say
from .plan import Plan
from .runs import Run

# start-up warnings of a source or callback whose resume may be inexact, and what to say about them
CAUSES = (
    ("its state restarts at each resume",
     "a callback keeps state in its attributes without the state protocol: it restarts at each resume"),
    ("cannot be checkpointed (",
     "the tf.data pipeline cannot be checkpointed, so a resumed epoch falls back to skipping batches"),
    ("cannot be checkpointed exactly",
     "the tf.data pipeline's reshuffling cannot be placed by its checkpoint, so a resume replays the run's "
     "batches from its first step"),
    ("a resumed epoch skips the batches",
     ("the training data is a plain tf.data.Dataset: a resumed epoch skips batches in a new iteration, "
      "exact only if it yields the same batches every time")),
    ("PyDataset that overrides on_epoch_end",
     ("the training data is a PyDataset with its own on_epoch_end: a resumed epoch is exact only if "
      "__getitem__ returns the same batch for the same index")),
)
SHOWN_VARIABLES = 12


def warnings(runs: list[Run]) -> list[str]:
    """What the runs' start-up warnings say about an inexact resume (each once)."""
    text = "".join(r.output for r in runs)
    return [why for needle, why in CAUSES if needle in text]


def report(diffs, count: int, again, runs: list[Run], plan: Plan) -> None:
    say(f"FAILED: {len(diffs)} of {count} variables differ between the uninterrupted and the interrupted "
        "run (max abs difference):")
    for name, gap in diffs[:SHOWN_VARIABLES]:
        say(f"  {name}: {gap:.6g}")
    if len(diffs) > SHOWN_VARIABLES:
        say(f"  ... and {len(diffs) - SHOWN_VARIABLES} more")
    for cause in causes(again, runs, plan):
        say(f"likely cause: {cause}")
    say("rerun with --keep to look at the run dirs, and with "
        f"--stop-seed {plan.stop_seed} to stop at the same steps")


def causes(again, runs: list[Run], plan: Plan) -> list[str]:
    """Why the runs differ: nondeterminism (``again``: what two uninterrupted runs differ in),
    the runs' start-up warnings, or else state kept outside the checkpoint."""
    found = []
    if again:
        names = ", ".join(name for name, _ in again[:3])
        ops = (" TF op determinism is off (--no-deterministic): ops may add up in another order each run."
               if "--no-deterministic" in plan.train_args else "")
        found.append(f"the job is not deterministic: two uninterrupted runs already differ ({len(again)} "
                     f"variables, e.g. {names}). build_data and the model must give the same result for "
                     f"the same seed and epoch: no unseeded numpy, Python or tf.random draws, no order "
                     f"that depends on timing.{ops}")
    found += warnings(runs)
    if not found:
        found.append("none the runs report: something outside the checkpoint changes training after a "
                     "resume (state kept in Python: a callback's or a data function's own counters, a "
                     "generator's position)")
    return found
