"""The example jobs that come with the package, by name: ``--job fashion_mnist``, ``--job digits``.

They live in the repo's ``jobs/`` folder; a wheel carries that folder as
``trainer/jobs`` (pyproject.toml maps it), so a name means the same job in a
checkout, an editable install and an installed wheel. ``trainer jobs`` lists
them with their paths, to copy one as the start of your own job. A file of
the folder is a job when it defines ``build_model`` and ``build_data``; the
others are its helpers (``fashion_mnist_idx.py``) or tools (``launch.py``).
Files are read with ``ast``, never imported, so listing costs no TensorFlow.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from . import errors

DEFAULT = "fashion_mnist"
_JOB_FUNCTIONS = {"build_model", "build_data"}


@dataclass(frozen=True)
class Example:
    name: str
    path: Path
    summary: str            # the first paragraph of its docstring
    needs: tuple[Path, ...]  # modules beside it that it imports: copy them with it


def folder() -> Path | None:
    """Where the example jobs are: ``trainer/jobs`` when installed, ``jobs/`` beside ``trainer/`` in a checkout."""
    package = Path(__file__).resolve().parent
    installed = package / "jobs"
    if installed.is_dir():
        return installed
    checkout = package.parent / "jobs"  # only in a checkout: site-packages/jobs would be another package's
    if (package.parent / "pyproject.toml").is_file() and checkout.is_dir():
        return checkout
    return None


def find(name: str) -> Path | None:
    """The file of the example job called ``name``; None if there is none."""
    where = folder()
    if where is None or not name.isidentifier():
        return None
    path = where / f"{name}.py"
    return path if path.is_file() and _is_job(_parse(path)) else None


def all_examples() -> list[Example]:
    where = folder()
    if where is None:
        return []
    found = []
    for path in sorted(where.glob("*.py")):
        tree = _parse(path)
        if path.stem.startswith("_") or not _is_job(tree):
            continue
        summary = " ".join((ast.get_docstring(tree) or "").strip().split("\n\n")[0].split())
        found.append(Example(path.stem, path, summary, _siblings_imported(tree, where)))
    found.sort(key=lambda e: (e.name != DEFAULT, e.name))
    return found


def _parse(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _is_job(tree: ast.Module) -> bool:
    defined = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    return _JOB_FUNCTIONS <= defined


def _siblings_imported(tree: ast.Module, where: Path) -> tuple[Path, ...]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return tuple(sorted(where / f"{n}.py" for n in names if (where / f"{n}.py").is_file()))


def show(as_json: bool = False) -> int:
    """``trainer jobs``: the example jobs, their files and what to copy with them."""
    examples = all_examples()
    if not examples:
        print("error: the example jobs are not installed (expected trainer/jobs/ in the package, or jobs/ beside "
              "trainer/ in a checkout); reinstall keras-resume, or pass --job path/to/your_job.py")
        return errors.BAD_INPUT
    if as_json:
        print(json.dumps([{"name": e.name, "path": str(e.path), "summary": e.summary, "default": e.name == DEFAULT,
                           "needs": [str(p) for p in e.needs]} for e in examples], indent=1))
        return errors.DONE
    width = max(len(e.name) for e in examples) + len(" (default)")
    for e in examples:
        label = e.name + (" (default)" if e.name == DEFAULT else "")
        print(f"{label:<{width}}  {e.path}")
        print(f"{'':<{width}}  {e.summary}")
        for need in e.needs:
            print(f"{'':<{width}}  imports {need.name} from beside it: copy that file too")
    print("\nrun one:     trainer train --job NAME --run-dir runs/x   (NAME as above; `--job NAME --help` lists its "
          "settings)\nstart yours: copy a file above (with what it imports) and run it with --job my_job.py")
    return errors.DONE
