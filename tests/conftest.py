pytest_plugins = ["tests.emulators"]

import pytest

from tests import helpers


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """One uninterrupted tiny run; interrupted runs must end bitwise equal to it."""
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    result = helpers.run(["train", "--run-dir", str(run_dir), *helpers.TINY, "--quiet"])
    assert result.returncode == 0, result.stdout + result.stderr
    return run_dir
