"""Per-example random numbers that are a pure function of (seed, epoch, position).

Augmentation drawn from a stateful generator depends on how many numbers were
drawn before, so a resumed run (or a worker that only prepares its own share
of each batch) would augment differently. Here every example carries a key
made of the run's seed, the epoch and its position in the epoch; each value is
a hash of that key, the draw's index and the element's index: vectorized over
the batch, identical on every machine, and independent of batching.

    def augment(x, y, rand: trainer.ExampleRandom):
        flip = rand.bernoulli(0.5)                       # one bool per example
        shift = rand.integers(-3, 4, shape=(2,))         # two ints per example
        noise = rand.normal(shape=x.shape[1:]) * 0.01    # per pixel
"""
from __future__ import annotations

import math

import tensorflow as tf

_GOLDEN = 0x9E3779B9


def _u32(value) -> tf.Tensor:
    return tf.constant(value & 0xFFFFFFFF, tf.uint32)


def _fmix(h: tf.Tensor) -> tf.Tensor:
    """MurmurHash3's 32-bit finalizer: every input bit affects every output bit."""
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))
    h = h * _u32(0x85EBCA6B)
    h = tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(13)))
    h = h * _u32(0xC2B2AE35)
    return tf.bitwise.bitwise_xor(h, tf.bitwise.right_shift(h, _u32(16)))


def _combine(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    mixed = b + _u32(_GOLDEN) + tf.bitwise.left_shift(a, _u32(6)) + tf.bitwise.right_shift(a, _u32(2))
    return _fmix(tf.bitwise.bitwise_xor(a, mixed))


def example_keys(seed: int, epoch: int, positions: tf.Tensor) -> tf.Tensor:
    """uint32 keys, one per example, from the run's seed, the epoch and the positions in it."""
    base = _fmix(_combine(_u32(seed), _u32(epoch)))
    return _combine(base, tf.cast(positions, tf.uint32))


class ExampleRandom:
    """Random values for a batch, one independent stream per example.

    Each method returns a tensor of shape ``[batch, *shape]``; two calls draw
    independent values (the n-th call of a trace always draws the same ones).
    """

    def __init__(self, keys: tf.Tensor):
        self._keys = tf.reshape(tf.cast(keys, tf.uint32), [-1, 1])
        self._draws = 0

    def _bits(self, shape) -> tf.Tensor:
        shape = tuple(int(d) for d in shape)
        size = math.prod(shape)
        self._draws += 1
        stream = _combine(self._keys, _u32(self._draws))
        bits = _combine(stream, tf.cast(tf.range(size), tf.uint32)[None, :])
        return tf.reshape(bits, tf.concat([tf.shape(self._keys)[:1], tf.constant(shape, tf.int32)], 0))

    def uniform(self, shape=(), minval: float = 0.0, maxval: float = 1.0) -> tf.Tensor:
        """float32 in [minval, maxval)."""
        unit = tf.cast(tf.bitwise.right_shift(self._bits(shape), _u32(8)), tf.float32) * (1.0 / (1 << 24))
        return minval + (maxval - minval) * unit

    def integers(self, minval: int, maxval: int, shape=()) -> tf.Tensor:
        """int32 in [minval, maxval)."""
        if maxval <= minval:
            raise ValueError(f"integers: need minval < maxval, got {minval} and {maxval}")
        span = tf.cast(maxval - minval, tf.float32)
        return minval + tf.minimum(tf.cast(tf.floor(self.uniform(shape) * span), tf.int32), maxval - minval - 1)

    def bernoulli(self, p: float = 0.5, shape=()) -> tf.Tensor:
        """bool, True with probability ``p``."""
        return self.uniform(shape) < p

    def normal(self, shape=(), mean: float = 0.0, stddev: float = 1.0) -> tf.Tensor:
        """float32 from a normal distribution (Box-Muller)."""
        u1 = 1.0 - self.uniform(shape)  # (0, 1]: log is finite
        u2 = self.uniform(shape)
        return mean + stddev * tf.sqrt(-2.0 * tf.math.log(u1)) * tf.cos(2.0 * math.pi * u2)
