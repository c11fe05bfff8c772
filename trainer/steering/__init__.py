"""Steering a live run from outside: signals (stop now) and learning-rate requests."""
