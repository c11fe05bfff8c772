"""A job's settings dataclass as command-line flags: ``depth: int = 20`` becomes ``--depth 20``.

Types understood: int, float, str, bool (``--flag`` / ``--no-flag``), ``X | None``
(the word ``none`` unsets it), ``tuple[int, ...]`` and ``tuple[float, ...]``
(comma-separated) and ``Literal[...]`` (one of the choices). Help comes from
``trainer.setting(..., help=...)`` metadata.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, Literal, Union

from .errors import BAD_INPUT, TrainerError

MAY_CHANGE = "may_change"


def setting(default: Any, *, help: str = "", may_change: bool = False) -> Any:  # noqa: A002 - like argparse
    """A dataclass field with a help text; ``may_change=True`` lets a resumed run use another
    value (a path, a knob that does not change the model or the data order)."""
    return dataclasses.field(default=default, metadata={"help": help, MAY_CHANGE: may_change})


class SettingError(TrainerError, ValueError, exit_code=BAD_INPUT):
    def __init__(self, name: str, problem: str):
        self.name = name
        super().__init__(f"--{name.replace('_', '-')}: {problem}")


def fields(cls) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type) of a settings dataclass."""
    hints = typing.get_type_hints(cls)
    return [(f, hints.get(f.name, Any)) for f in dataclasses.fields(cls)]


def _optional(kind) -> tuple[Any, bool]:
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else Any), True
    return kind, False


def parse_value(name: str, kind, text: str) -> Any:
    """``text`` as a value of type ``kind``; SettingError naming the setting otherwise."""
    kind, optional = _optional(kind)
    if optional and text.strip().lower() == "none":
        return None
    try:
        if typing.get_origin(kind) is Literal:
            choices = typing.get_args(kind)
            for choice in choices:
                if str(choice) == text:
                    return choice
            raise ValueError(f"expected one of {', '.join(map(str, choices))}")
        if typing.get_origin(kind) is tuple:
            item = (typing.get_args(kind) or (str,))[0]
            return tuple(parse_value(name, item, part.strip()) for part in text.split(",") if part.strip())
        if kind is bool:
            lowered = text.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true or false")
        if kind in (int, float, str):
            return kind(text)
        return text
    except ValueError as exc:
        expected = getattr(kind, "__name__", str(kind))
        raise SettingError(name, f"{text!r} is not a valid {expected} ({exc})"
                           + ("; 'none' unsets it" if optional else "")) from None


def add_flags(parser: argparse.ArgumentParser, cls, taken: set[str], owner: str) -> None:
    """One flag per field, all defaulting to None (unset: the preset or the dataclass default wins)."""
    group = parser.add_argument_group(f"settings of {owner}")
    for f, kind in fields(cls):
        flag = "--" + f.name.replace("_", "-")
        if flag in taken:
            raise SettingError(f.name, f"the job's setting {f.name!r} collides with the trainer's own "
                                       f"{flag} flag; rename it in {owner}")
        help_text = f.metadata.get("help", "") or None
        base, _ = _optional(kind)
        if base is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            continue

        def convert(text, name=f.name, kind=kind):
            try:
                return parse_value(name, kind, text)
            except SettingError as exc:
                raise argparse.ArgumentTypeError(str(exc).split(": ", 1)[1]) from None
        default = f.default if f.default is not dataclasses.MISSING else None
        group.add_argument(flag, type=convert, default=None, metavar=_metavar(kind),
                           help=(help_text or "") + (f" (default: {_show(default)})" if default is not None else ""))


def _metavar(kind) -> str:
    base, optional = _optional(kind)
    if typing.get_origin(base) is Literal:
        word = "{" + ",".join(map(str, typing.get_args(base))) + "}"
    elif typing.get_origin(base) is tuple:
        word = "A,B,..."
    else:
        word = getattr(base, "__name__", "VALUE").upper()
    return word + ("|none" if optional else "")


def _show(value) -> str:
    return ",".join(map(str, value)) if isinstance(value, tuple) else str(value)


def build(cls, values: dict, owner: str):
    """An instance of ``cls`` from ``values``; unknown names and failed validation name the setting."""
    known = {f.name: kind for f, kind in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise SettingError(unknown[0], f"{owner} has no setting {unknown[0]!r} (it has: {', '.join(known) or 'none'})")
    converted = {k: parse_value(k, known[k], v) if isinstance(v, str) and known[k] is not str else v
                 for k, v in values.items()}
    for name, value in converted.items():
        _check_type(name, known[name], value)
        if isinstance(value, list):
            converted[name] = tuple(value)
    try:
        return cls(**converted)
    except (ValueError, TypeError) as exc:  # the dataclass's own __post_init__ checks
        raise ValueError(f"{owner}: invalid settings: {exc}") from None


def _check_type(name: str, kind, value) -> None:
    base, optional = _optional(kind)
    if value is None:
        if not optional:
            raise SettingError(name, "may not be none")
        return
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        return
    if typing.get_origin(base) is tuple:
        ok = isinstance(value, (tuple, list))
    elif typing.get_origin(base) is Literal:
        ok = value in typing.get_args(base)
    elif isinstance(base, type) and base is not Any:
        ok = isinstance(value, base) and not (base is int and isinstance(value, bool))
    else:
        ok = True
    if not ok:
        raise SettingError(name, f"expected {getattr(base, '__name__', base)}, got {value!r}")


def to_json(instance) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(instance).items()}


def identity(instance) -> dict:
    """The settings a resumed run must keep (all but those marked ``may_change``)."""
    data = to_json(instance)
    return {f.name: data[f.name] for f, _ in fields(type(instance)) if not f.metadata.get(MAY_CHANGE)}
