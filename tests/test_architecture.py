"""The package's layering and its lack of import cycles, as `.importlinter` declares them."""
import subprocess
import sys

from tests import helpers

# lint-imports's own entry point, run by this very interpreter (the one whose environment has
# import-linter, whatever PATH says)
LINT_IMPORTS = [sys.executable, "-c", "from importlinter.cli import lint_imports_command; lint_imports_command()"]


def test_imports_follow_the_layers_and_form_no_cycle():
    result = subprocess.run([*LINT_IMPORTS, "--no-cache"], cwd=helpers.ROOT, env=helpers.env(),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"lint-imports failed:\n{result.stdout}\n{result.stderr}"
