"""MkDocs hook: the command-line reference, generated from the argument parsers at build time.

``docs/reference/cli.md`` holds the marker ``<!-- cli-reference -->``; this hook replaces it
with one section per command, made from ``trainer.cli`` (and ``trainer.verify.plan``) as
they are, so the page cannot drift from the flags. The default job's settings are listed
too: they are flags of ``train`` generated from the job's ``Settings`` dataclass.
"""
from __future__ import annotations

import argparse
import html
import os
import sys

MARKERS = {"reference/cli.md": "<!-- cli-reference -->", "reference/options.md": "<!-- options-reference -->"}


def on_page_markdown(markdown: str, page, config, files) -> str:
    marker = MARKERS.get(page.file.src_uri)
    if marker is None:
        return markdown
    if marker not in markdown:
        raise ValueError(f"{page.file.src_uri} lost its marker {marker}")
    repo_root = os.path.dirname(config.config_file_path)
    make = reference if page.file.src_uri == "reference/cli.md" else options
    return markdown.replace(marker, make(repo_root))


def _import_path(repo_root: str) -> None:
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)  # this checkout's trainer, not an installed one


def reference(repo_root: str) -> str:
    """The generated Markdown: `trainer`'s commands, each with its usage and flags."""
    _import_path(repo_root)
    from trainer import cli
    from trainer.verify import plan

    subcommands = _subparsers(cli.build_parser())
    sections = [_section("trainer train", cli.train_parser(), "Start a run, or resume it."),
                _section("trainer verify", plan.parser("trainer verify"), "")]
    for name in ("lr", "status", "export", "jobs"):
        sections.append(_section(f"trainer {name}", subcommands[name], ""))
    sections.append(_job_settings(cli))
    return "\n".join(sections)


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise ValueError("trainer's parser has no subcommands")


def _section(title: str, parser: argparse.ArgumentParser, fallback: str) -> str:
    parser.prog = title
    usage = parser.format_usage().replace("usage: ", "", 1).strip()
    lines = [f"## `{title}`", "", parser.description or fallback, "", "```text", usage, "```", ""]
    lines += _table(parser, skip=set())
    return "\n".join(lines)


def _table(parser: argparse.ArgumentParser, skip: set[str]) -> list[str]:
    rows = ["| argument | value | default | what |", "|---|---|---|---|"]
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction) or skip & set(action.option_strings):
            continue
        rows.append("| " + " | ".join((_names(action), _value(action), _default(action),
                                      _cell(action.help or ""))) + " |")
    return rows + [""]


def _names(action: argparse.Action) -> str:
    if not action.option_strings:
        return f"`{action.dest.upper()}`"
    return ", ".join(f"`{name}`" for name in action.option_strings)


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return "(a switch)"
    if action.choices:
        return ", ".join(f"`{c}`" for c in action.choices)
    if action.metavar:
        return f"`{action.metavar}`"
    kind = getattr(action.type, "__name__", None)
    return _cell(kind) if kind and kind not in ("<lambda>",) else ""


def _default(action: argparse.Action) -> str:
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    return f"`{_cell(str(action.default))}`"


def _cell(text: str) -> str:
    return html.escape(text, quote=False).replace("|", "\\|").replace("\n", " ")


def _job_settings(cli) -> str:
    """The default job's settings: the flags `train --help` adds once the job is loaded."""
    from trainer.job import load
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    cli.import_tensorflow(quiet=True)  # the default job imports TensorFlow: without its start-up lines
    job = load(None)
    generic = {s for a in cli.train_parser()._actions for s in a.option_strings}
    presets = ", ".join(f"`{p}`" for p in job.presets)
    intro = ("Each field of a job's `Settings` dataclass is a flag of `train` (see [Job files]"
             "(job.md#settings-become-flags)); `trainer train --job NAME --help` lists any job's. "
             f"The default job's presets: {presets} (default `{job.default_preset}`).")
    lines = [f"## Settings of the default job, `{job.label}`", "", intro, ""]
    return "\n".join(lines + _table(cli.train_parser(job), skip=generic))


def options(repo_root: str) -> str:
    """Every field of TrainConfig: its `train` flag, its `trainer.fit` keyword, default and meaning."""
    _import_path(repo_root)
    import dataclasses

    from trainer import cli
    from trainer.config import TrainConfig

    flags = {a.dest: a for a in cli.train_parser()._actions if a.option_strings}
    rows = ["| `trainer.fit` keyword | `train` flag | default | what |", "|---|---|---|---|"]
    for f in dataclasses.fields(TrainConfig):
        if f.name == "run_dir":
            continue
        action = flags.get(f.name)
        flag = ", ".join(f"`{s}`" for s in action.option_strings) if action else ""
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(f"| `{f.name}` | {flag} | `{_cell(repr(default))}` | {_cell(action.help or '') if action else ''} |")
    return "\n".join(rows) + "\n"
