"""The documentation: the site builds with ``--strict``, and the code blocks of the README and
the tutorials run, so neither can drift from the code.

Code blocks are found with Sybil's Markdown lexer. A page that runs (the README, every
tutorial) is a story: its ``bash`` and ``python`` blocks run in order in one fresh folder,
each in a subprocess (``trainer`` on PATH is this checkout's). Comments right above a block
change what runs (see docs/explanation/docs.md, "Runnable examples"):

    <!-- docs-test: skip REASON -->            not run (REASON is required); syntax still checked
    <!-- docs-test: file NAME -->              written to NAME in the page's folder (after any replace), not run
    <!-- docs-test: replace OLD => NEW -->     run with OLD replaced by NEW (small settings)
    <!-- docs-test: before COMMAND -->         a hidden set-up command, run before the block

Every other page's blocks are checked for syntax only (``compile``, ``bash -n``).
"""
from __future__ import annotations

import ast
import dataclasses
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from sybil import Document, Region
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

import trainer
from trainer.cli import train_parser
from trainer.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
RUN_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "tutorials").glob("*.md"))]
ALL_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
DIRECTIVE = re.compile(r"^<!-- docs-test: (?P<name>[a-z]+)(?: (?P<arg>.*?))? -->$")
KINDS = ("skip", "file", "replace", "before")
BLOCK_TIMEOUT_S = 600  # a bound, not a speed goal: a hung block fails instead of holding the suite


@dataclass
class Block:
    language: str
    source: str
    line: int
    directives: list[tuple[str, str]] = field(default_factory=list)

    def args(self, kind: str) -> list[str]:
        return [arg for name, arg in self.directives if name == kind]

    def runnable_source(self) -> str:
        text = self.source
        for rule in self.args("replace"):
            old, sep, new = rule.partition(" => ")
            assert sep and old in text, f"line {self.line}: replace {old!r}: not in the block"
            text = text.replace(old, new)
        return text


def _directives_above(text: str, start: int, line: int) -> list[tuple[str, str]]:
    """The docs-test comments right above a block (blank lines between them allowed)."""
    found = []
    for above in reversed(text[:start].splitlines()):
        if not above.strip():
            continue
        match = DIRECTIVE.match(above.strip())
        if not match:
            if above.strip().startswith("<!-- docs-test"):
                raise AssertionError(f"line {line}: malformed docs-test comment above the block: {above!r}")
            break
        assert match["name"] in KINDS, f"line {line}: unknown docs-test directive {match['name']!r}"
        assert match["arg"], f"line {line}: docs-test {match['name']} needs an argument (skip: the reason)"
        found.append((match["name"], match["arg"]))
    return list(reversed(found))


def _blocks_parser(document: Document):
    lexer = FencedCodeBlockLexer(language=r"python|bash")
    for region in lexer(document):
        line = document.text.count("\n", 0, region.start) + 1
        block = Block(region.lexemes["language"], str(region.lexemes["source"]), line,
                      _directives_above(document.text, region.start, line))
        yield Region(region.start, region.end, block, _evaluate)


def blocks(page: Path) -> list[Block]:
    document = Document.parse(str(page), _blocks_parser)
    return [example.parsed for example in document]


def _evaluate(example):  # Sybil's evaluator; the page tests call their own runner instead
    return None


def check_syntax(block: Block, where: str) -> None:
    if block.language == "python":
        compile(block.source, where, "exec")
    else:
        done = subprocess.run(["bash", "-n"], check=False, input=block.source, text=True, capture_output=True)
        assert done.returncode == 0, f"{where}: bash -n: {done.stderr}"


class PageRunner:
    """Runs a page's blocks in order in one folder, as a reader would, with this checkout's trainer."""

    def __init__(self, folder: Path):
        self.folder = folder
        bin_dir = folder / ".bin"
        bin_dir.mkdir(parents=True)
        shim = bin_dir / "trainer"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m trainer "$@"\n')
        shim.chmod(0o755)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                    "PYTHONUNBUFFERED": "1"}
        self.env.pop("TRAINER_STORAGE_OPTIONS", None)

    def run(self, block: Block, where: str) -> None:
        check_syntax(block, where)
        if block.args("skip"):
            return
        files = block.args("file")
        if files:
            (self.folder / files[0]).write_text(block.runnable_source())
            return
        for command in block.args("before"):
            self._shell(command, f"{where} (before)")
        source = block.runnable_source()
        if block.language == "python":
            self._call([sys.executable, "-c", source], where, source)
        else:
            self._shell(source, where)

    def _shell(self, script: str, where: str) -> None:
        self._call(["bash", "-euo", "pipefail", "-c", script], where, script)

    def _call(self, argv: list[str], where: str, source: str) -> None:
        done = subprocess.run(argv, check=False, cwd=self.folder, env=self.env, text=True, capture_output=True,
                              timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, (f"{where} exited with {done.returncode}\n--- ran:\n{source}\n"
                                      f"--- stdout:\n{done.stdout[-4000:]}\n--- stderr:\n{done.stderr[-4000:]}")


@pytest.mark.parametrize("page", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_page_code_blocks_run(page: Path, tmp_path: Path):
    runner = PageRunner(tmp_path / "work")
    page_blocks = blocks(page)
    assert page_blocks, f"{page}: no code blocks found"
    for block in page_blocks:
        runner.run(block, f"{page.relative_to(ROOT)}:{block.line}")


def test_every_code_block_parses_and_every_skip_has_a_reason():
    """The pages that do not run: their blocks must still be valid Python and bash."""
    checked = 0
    for page in ALL_PAGES:
        for block in blocks(page):
            check_syntax(block, f"{page.relative_to(ROOT)}:{block.line}")
            checked += 1
    assert checked >= 30, f"only {checked} code blocks found: has the lexer stopped finding them?"


COMMAND = re.compile(r"(?:^|[\s/])trainer (train|verify|lr|status|export|jobs)\b([^#]*)")


def _setting_flags(sources: list[str]) -> set[str]:
    """The flags that jobs' Settings dataclasses make (field `train_size` -> --train-size, --no-train-size)."""
    flags = set()
    for source in sources:
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.ClassDef) and node.name == "Settings":
                for item in node.body:
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name):
                        name = item.target.id.replace("_", "-")
                        flags |= {f"--{name}", f"--no-{name}"}
    return flags


def test_every_command_in_the_docs_uses_flags_that_exist():
    """Blocks that do not run still name real commands and flags: a renamed flag fails here."""
    from trainer.cli import build_parser
    from trainer.verify.plan import parser as verify_parser
    jobs = [p.read_text() for p in (ROOT / "jobs").glob("*.py")]
    generic = {s for a in train_parser()._actions for s in a.option_strings}
    verify = {s for a in verify_parser()._actions for s in a.option_strings}
    pages = {page: blocks(page) for page in ALL_PAGES}
    documented_jobs = [b.source for page_blocks in pages.values() for b in page_blocks if b.language == "python"]
    known = generic | _setting_flags(jobs + documented_jobs)  # the example jobs' and the docs' own (my_job.py)
    checked = 0
    for page, page_blocks in pages.items():
        for block in page_blocks:
            if block.language != "bash":
                continue
            for line in block.source.replace("\\\n", " ").splitlines():
                match = COMMAND.search(line)
                if not match:
                    continue
                where = f"{page.relative_to(ROOT)}:{block.line}: {line.strip()}"
                command, args = match[1], shlex.split(match[2].replace("$", ""))
                if command in ("train", "verify"):
                    allowed = known | (verify if command == "verify" else set())
                    unknown = [a.split("=")[0] for a in args if a.startswith("--") and a.split("=")[0] not in allowed]
                    assert not unknown, f"{where}: no such flag {unknown}"
                else:
                    try:
                        build_parser().parse_args([command, *args])
                    except SystemExit:
                        raise AssertionError(f"{where}: `trainer {command}` does not take these arguments") from None
                checked += 1
    assert checked >= 30, f"only {checked} trainer commands found in the docs"


def test_readme_stays_a_five_minute_read():
    """The README is the first layer; the rest belongs in docs/ (see docs/explanation/docs.md)."""
    lines = (ROOT / "README.md").read_text().count("\n")
    assert lines <= 250, f"README.md has {lines} lines: move detail into the site under docs/"
    assert "make docs" in (ROOT / "README.md").read_text(), "the README must say how to serve the docs"


def test_exit_code_reference_lists_every_code():
    """Launchers requeue by exit code, so the codes are public: each one in trainer.errors is documented."""
    from trainer import errors
    table = (ROOT / "docs" / "reference" / "exit-codes.md").read_text()
    codes = {name: value for name, value in vars(errors).items() if name.isupper() and isinstance(value, int)}
    assert len(codes) >= 7
    for name, code in codes.items():
        assert f"\n| {code} |" in table, f"docs/reference/exit-codes.md lacks exit code {code} ({name})"


def test_directives_are_strict(tmp_path: Path):
    """A typo in a docs-test comment must fail, not silently run the block at full size."""
    page = tmp_path / "page.md"
    page.write_text("<!-- docs-test: skipp later -->\n\n```bash\ntrue\n```\n")
    with pytest.raises(AssertionError, match="unknown docs-test directive"):
        blocks(page)
    page.write_text("<!-- docs-test: replace --epochs 20 => --epochs 1 -->\n```bash\ntrainer train\n```\n")
    with pytest.raises(AssertionError, match="not in the block"):
        blocks(page)[0].runnable_source()


def test_site_builds_strict(tmp_path: Path):
    """`mkdocs build --strict`: a broken link, a missing page or API reference fails the suite."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site),
                           "--config-file", str(ROOT / "mkdocs.yml")], check=False, cwd=ROOT, text=True,
                          capture_output=True, timeout=BLOCK_TIMEOUT_S,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-6000:]
    cli = (site / "reference" / "cli" / "index.html").read_text()
    parser_flags = {s for a in train_parser()._actions for s in a.option_strings if s.startswith("--")}
    for flag in sorted(parser_flags) + ["--at-epoch", "--stop-seed", "--train-size"]:  # train, lr, verify, the job
        assert flag in cli, f"the generated CLI reference lacks {flag}"
    options = (site / "reference" / "options" / "index.html").read_text()
    assert all(f"<code>{f.name}</code>" in options for f in dataclasses.fields(TrainConfig) if f.name != "run_dir")
    api = (site / "reference" / "api" / "index.html").read_text()
    for name in trainer.__all__:  # every public name, documented from its docstring
        module = trainer._LAZY.get(name, "settings")
        assert f'id="trainer.{module}.{name}"' in api, f"the API reference lacks trainer.{name}"
