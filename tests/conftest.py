pytest_plugins = ["tests.emulators"]

import pytest

from tests import helpers


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(name, args)``: the run dir of one uninterrupted run per name (made once);
    interrupted runs with the same arguments must end bitwise equal to it."""
    runs = {}

    def get(name, args):
        if name not in runs:
            run_dir = tmp_path_factory.mktemp(f"reference-{name}") / "run"
            result = helpers.run(["train", "--run-dir", str(run_dir), *args, "--quiet"], timeout=900)
            assert result.returncode == 0, result.stdout + result.stderr
            runs[name] = run_dir
        return runs[name]
    return get


@pytest.fixture(scope="session")
def reference_run(uninterrupted):
    """The uninterrupted tiny run of the reference job."""
    return uninterrupted("reference", helpers.TINY)
