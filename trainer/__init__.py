"""Preemption-tolerant Keras/TensorFlow training: exact mid-epoch resume,
signal-driven checkpoint flushes, LR steering and a training monitor."""

__version__ = "0.1.0"
