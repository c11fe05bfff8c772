"""What a plain ``tf.data`` pipeline's graph says about resuming it from TensorFlow's own
iterator checkpoint: whether a restored iterator continues exactly as the uninterrupted one.

Decided from the serialized graph, not by making an iterator to find out: an iterator
would draw seeds from the pipeline's shuffles and shift every epoch's order.

Reshuffling ``shuffle`` ops draw each pass's seeds from a seed generator owned by the
dataset. TensorFlow's iterator checkpoint records that generator's position only
inside the shuffle's live iterator, and an iterator drops an exhausted input near an
epoch's end (``batch`` on a short last batch, another shuffle buffer draining its
input): a state saved then restores the current epoch exactly but leaves the
generator where the new process has it, so every later epoch comes in another order.
The position is known, though: each such shuffle draws once per pass, so after
``passes`` begun it stands at ``passes`` draws. :func:`seed_generator_states` moves
it there through throwaway iterators of the shuffle and keeps their states;
:func:`restore_seed_generators` sets it back to them after the saved state is restored.
"""
from __future__ import annotations

from dataclasses import dataclass

import tensorflow as tf

# ops whose saved state TensorFlow accepts but whose restored iterator can hang
_HANGS_WHEN_RESTORED = {"ParallelInterleaveDatasetV4": "a parallel interleave (num_parallel_calls) hangs once "
                                                       "restored; interleave sequentially and decode in a "
                                                       "parallel map"}

# attributes of ops that draw a new order each pass from a seed generator owned by the dataset
NEW_ORDER_EACH_PASS = ("reshuffle_each_iteration", "rerandomize_each_iteration")

RESHUFFLES = ("a new random order each pass whose seed position TensorFlow's iterator checkpoint can lose (a "
              "reshuffling op other than a shuffle on the pipeline's main chain: under zip, concatenate, "
              "sample_from_datasets or an inner repeat, or a random dataset); a restored iterator would "
              "draw later epochs in another order")


@dataclass(frozen=True)
class Verdict:
    """How a pipeline resumes: ``reason`` None restores the saved iterator, after moving the seed
    generators of ``shuffles`` (its reshuffling shuffles) to their place; otherwise why not, and
    whether replaying the run's batches from its start is exact (``replay``: the pipeline is
    deterministic but its order depends on every pass before the current one)."""
    reason: str | None = None
    replay: bool = False
    shuffles: tuple = ()


def checkpointable(dataset: tf.data.Dataset) -> tuple[tf.data.Dataset, Verdict]:
    """(the dataset to iterate, its verdict); symbolic checkpointing (positions rather than
    buffers) is switched on where the iterator is restored."""
    graph = _graph(dataset)
    if isinstance(graph, str):
        return dataset, Verdict(graph)
    nodes = [*graph.node, *(node for f in graph.library.function for node in f.node_def)]
    hang = next((why for op, why in _HANGS_WHEN_RESTORED.items() if any(n.op == op for n in nodes)), None)
    if hang:
        return dataset, Verdict(hang)
    reshuffling = sum(node.attr[name].b for node in nodes for name in NEW_ORDER_EACH_PASS if name in node.attr)
    shuffles = _once_per_pass_shuffles(dataset)
    if len(shuffles) != reshuffling:
        return dataset, Verdict(RESHUFFLES, replay=True)
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = True
    return dataset.with_options(options), Verdict(shuffles=tuple(shuffles))


def _once_per_pass_shuffles(dataset: tf.data.Dataset, found=None) -> list:
    """The reshuffling ``shuffle`` datasets on the pipeline's chain of single inputs (each one
    instantiated once per pass); none below an op with several inputs or a repeat, whose
    shuffles may be instantiated more or less often (the caller then sees a count mismatch)."""
    found = [] if found is None else found
    if type(dataset).__name__ == "_ShuffleDataset" and getattr(dataset, "_reshuffle_each_iteration", False):
        found.append(dataset)
    inputs = dataset._inputs()
    if len(inputs) == 1 and "Repeat" not in type(dataset).__name__:
        _once_per_pass_shuffles(inputs[0], found)
    return found


def seed_generator_states(shuffles, passes: int) -> list:
    """[(shuffle, the state of an iterator made when its seed generator had drawn for ``passes``
    passes)]: ``passes`` throwaway iterators each draw once, from where build_data left it
    (the same in every process of the run)."""
    states = []
    for shuffle in shuffles if passes else ():
        for _ in range(passes):
            probe = iter(shuffle)
        states.append((shuffle, probe._serialize_to_tensors()))
    return states


def restore_seed_generators(states) -> None:
    """Each shuffle's seed generator back to its saved position (restoring an iterator of the
    shuffle sets the generator it shares with the pipeline)."""
    for shuffle, state in states:
        iter(shuffle)._restore_from_tensors(state)


def _graph(dataset: tf.data.Dataset):
    """The pipeline's GraphDef, or why it has state outside TensorFlow (a Python generator or
    function; symbolic checkpointing would not refuse it)."""
    from tensorflow.python.data.ops.options import ExternalStatePolicy
    try:
        serialized = dataset._as_serialized_graph(external_state_policy=ExternalStatePolicy.FAIL)
    except tf.errors.OpError as exc:
        return first_line(exc).removeprefix("Failed to serialize the input pipeline graph: ")
    return tf.compat.v1.GraphDef.FromString(serialized.numpy())


def first_line(exc: Exception) -> str:
    """A TensorFlow error's message without its op and function decorations."""
    text = str(exc).split("}}")[-1].strip().splitlines()
    return (text[0] if text else type(exc).__name__).split(" [Op:")[0].rstrip(".")[:200]
