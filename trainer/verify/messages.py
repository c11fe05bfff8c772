"""What every part of verify prints with, and the error that ends it."""
from __future__ import annotations

from .. import errors


class VerifyError(errors.TrainerError):
    """verify cannot go on; ``exit_code`` is given per failure (2 for bad flags, else 1), the
    message says why."""

    def __init__(self, message: str, code: int = errors.CRASH):
        super().__init__(message)
        self.exit_code = code


def tail(output: str, lines: int = 15) -> str:
    return "\n".join("    " + line for line in output.rstrip().splitlines()[-lines:])


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def say(message: str) -> None:
    print(f"verify: {message}", flush=True)
