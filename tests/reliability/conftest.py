"""Counts of injected faults, printed at the end of the test run (the README quotes them)."""
from collections import defaultdict

import pytest

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
