"""Every pass of a logical shard inside one ``tf.data`` iterator, each pass shuffled by seeds of its own.

A shard's passes must follow one another without Python between them: a pass opened
between two steps stalls the step (its buffers fill while nothing else runs). But a
reshuffling ``shuffle`` draws each pass's seeds from a seed generator that every shard
made from the same pipeline shares, and shards that open passes on their own threads would
draw in a different order in every run. So each shard reads its pipeline's graph with
every reshuffling shuffle made a fixed-seed one, its second seed moved by the pass and the
shard (:class:`PassPipeline`): pass ``p`` of shard ``k`` is the same in every process and
every run, needs no seed generator, and an iterator over all passes (``range`` then
``flat_map``) saves and restores itself whole with TensorFlow's own iterator checkpoint.
"""
from __future__ import annotations

import tensorflow as tf

from .pipeline_graph import NEW_ORDER_EACH_PASS, first_line

_RESHUFFLING_SHUFFLE = "ShuffleDatasetV3"  # (what Dataset.shuffle makes; its inputs: data, size, seed, seed2, generator)


class PassGraphError(ValueError):
    """The pipeline's graph cannot be read pass by pass; the message says why."""


class PassPipeline:
    """``dataset`` (one pass) as a function of the pass number: ``make(p)`` builds pass ``p`` in
    the graph being traced (a ``flat_map``'s function)."""

    def __init__(self, dataset: tf.data.Dataset, shard: int, shards: int):
        self.spec, self.shard, self.shards = dataset.element_spec, shard, shards
        self.dataset = dataset  # (alive: its functions, which the graph calls, stay registered)
        self.graph, self.output, self.seeds = _fixed_seed_graph(dataset)

    def make(self, p: tf.Tensor) -> tf.data.Dataset:
        moved = tf.cast(p, tf.int64) * self.shards + self.shard + 1  # (never the (0, 0) that means "random")
        input_map = {name: tf.constant(value, tf.int64) + moved for name, value in self.seeds.items()}
        [variant] = tf.graph_util.import_graph_def(self.graph, input_map=input_map, return_elements=[self.output],
                                                   name="pass")
        from tensorflow.python.data.ops import dataset_ops
        return dataset_ops.from_variant(variant, self.spec)

    def passes(self, first: int = 0, skip: int = 0, empty: str = "a pass has no records") -> tf.data.Dataset:
        """Passes ``first``, ``first + 1``, ... without end, ``skip`` elements of the first left out;
        each element ``(pass, number in the pass, element)``. A pipeline without records fails
        with ``empty`` where it would otherwise look for a record forever: each pass ends with
        a marker, and two markers in a row are a pass without one."""
        def one_pass(p):
            numbered = self.make(p).enumerate()
            numbered = numbered.skip(tf.where(p == first, tf.constant(skip, tf.int64), 0))
            marker = tf.data.Dataset.from_tensors((p, tf.constant(-1, tf.int64), tf.experimental.Optional.empty(
                self.spec)))
            return numbered.map(lambda i, element: (p, i, tf.experimental.Optional.from_value(element))).concatenate(
                marker)

        def no_empty_pass(markers_in_a_row, item):
            markers_in_a_row = tf.where(item[1] < 0, markers_in_a_row + 1, 0)
            with tf.control_dependencies([tf.debugging.assert_less(markers_in_a_row, tf.constant(2, tf.int64),
                                                                   message=empty)]):
                return tf.identity(markers_in_a_row), item
        return (tf.data.Dataset.range(first, tf.int64.max).flat_map(one_pass)
                .scan(tf.constant(0, tf.int64), no_empty_pass)
                .filter(lambda p, i, element: i >= 0)
                .map(lambda p, i, element: (p, i, element.get_value())))


def _fixed_seed_graph(dataset: tf.data.Dataset):
    """(the pass's GraphDef without its return node, the name of its output, {seed2 tensor: value})."""
    from tensorflow.python.ops import gen_dataset_ops
    try:
        serialized = gen_dataset_ops.dataset_to_graph_v2(dataset._variant_tensor, external_state_policy=0)
    except tf.errors.OpError as exc:
        raise PassGraphError(f"its graph cannot be serialized ({first_line(exc)})") from exc
    graph = tf.compat.v1.GraphDef.FromString(serialized.numpy())
    nested = [n.op for f in graph.library.function for n in f.node_def if _reshuffles(n)]
    if nested:
        raise PassGraphError(f"it reshuffles inside a function ({nested[0]} in a flat_map or interleave of datasets)")
    nodes = {node.name: node for node in graph.node}
    seeds = {}
    for node in list(graph.node):
        if not _reshuffles(node):
            continue
        if node.op != _RESHUFFLING_SHUFFLE:
            raise PassGraphError(f"its {node.op} draws a new random order each pass from a seed generator")
        seed2 = nodes.get(node.input[3].split(":")[0])
        if seed2 is None or seed2.op != "Const":
            raise PassGraphError("a shuffle's seed is computed, not a constant")
        node.op = "ShuffleDataset"  # (the fixed-seed shuffle: its seeds, no generator)
        del node.input[4]
        node.attr["reshuffle_each_iteration"].b = False
        seeds[f"{seed2.name}:0"] = int(tf.make_ndarray(seed2.attr["value"].tensor))
    ret = next(node for node in graph.node if node.op == "_Retval")
    graph.node.remove(ret)
    output = ret.input[0] if ":" in ret.input[0] else f"{ret.input[0]}:0"
    return graph, output, seeds


def _reshuffles(node) -> bool:
    return any(node.attr[name].b for name in NEW_ORDER_EACH_PASS if name in node.attr)
