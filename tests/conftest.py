from collections import defaultdict

import pytest

from tests import helpers

pytest_plugins = ["tests.emulators"]


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


_COUNTS: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))


@pytest.fixture
def fault_report(request):
    """``fault_report[key] += n`` adds to this test's line of the summary."""
    return _COUNTS[request.node.name]


def pytest_terminal_summary(terminalreporter):
    if not _COUNTS:
        return
    terminalreporter.section("reliability: faults injected")
    for test, counts in sorted(_COUNTS.items()):
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
