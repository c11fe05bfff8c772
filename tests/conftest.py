import fcntl
import os

# The suite reads the machine lines (STEP/EPOCH) from stdout; subprocesses inherit this. Tests of
# the human output set the format themselves.
os.environ.setdefault("TRAINER_LOG_FORMAT", "json")
import shutil
from collections import defaultdict
from pathlib import Path

import pytest

from tests import helpers

pytest_plugins = ["tests.emulators", "tests.scheduling"]

# No test watches a real cloud's metadata service: runs (and their subprocesses, which inherit
# this) watch none, unless a test points the sources at its own stubs on 127.0.0.1.
os.environ["TRAINER_NOTICES"] = "off"

FAULTS = "faults injected"  # the user property that carries a test's fault counts to the summary


def _shared_root(tmp_path_factory) -> Path:
    """A folder every xdist worker of this session sees (the parent of their base temps);
    the base temp itself without xdist."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


def _train_once(folder: Path, args, workers: int = 1) -> Path:
    """``folder/run`` trained with ``args`` (by ``workers`` processes through TF_CONFIG) by
    whichever test process gets there first; the others wait on the lock and reuse it ("done"
    marks a finished run, so a failed one is retried)."""
    folder.mkdir(exist_ok=True)
    run_dir, done = folder / "run", folder / "done"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            shutil.rmtree(run_dir, ignore_errors=True)
            command = ["train", "--run-dir", str(run_dir), *args, "--quiet"]
            if workers == 1:
                result = helpers.run(command, timeout=900)
                assert result.returncode == 0, result.stdout + result.stderr
            else:
                results = helpers.finish(helpers.start_workers(command, workers), timeout=900)
                assert [code for code, _ in results] == [0] * workers, results
            done.touch()
    return run_dir


@pytest.fixture(scope="session")
def uninterrupted(tmp_path_factory):
    """``uninterrupted(name, args, workers=1)``: the run dir of one uninterrupted run per name, made once
    for the whole session (shared by xdist workers); interrupted runs with the same arguments
    must end bitwise equal to it."""
    root = _shared_root(tmp_path_factory)
    return lambda name, args, workers=1: _train_once(root / f"reference-{name}", args, workers)


@pytest.fixture(scope="session")
def two_worker_reference(uninterrupted):
    """The uninterrupted run of two workers (``helpers.TWO_WORKERS``, TF_CONFIG on 127.0.0.1)."""
    return uninterrupted("two-workers", helpers.TWO_WORKERS, workers=2)


@pytest.fixture(scope="session")
def reference_run(uninterrupted):
    """The uninterrupted tiny run of the reference job."""
    return uninterrupted("reference", helpers.TINY)


@pytest.fixture
def fault_report(request):
    """``fault_report[key] += n`` adds to this test's line of the summary. The counts travel in
    the test's user properties, so that they reach the summary from xdist workers too."""
    counts = defaultdict(int)
    yield counts
    request.node.user_properties.append((FAULTS, dict(counts)))


# The files that take longest, longest first: `make test` hands whole files to its two xdist
# workers in collection order (--dist loadfile --no-loadscope-reorder), and a long file that
# starts last (the SLURM file runs its jobs one after another) would leave one worker idle.
LONGEST_FIRST = ("test_slurm.py", "reliability/test_sigkill.py", "test_sharded.py", "test_streaming.py",
                 "test_verify.py", "reliability/test_peer_kill.py", "test_multiworker.py", "test_replicas.py",
                 "test_resume.py", "test_fit_api.py", "reliability/test_storage_faults.py",
                 "reliability/test_signal_timing.py", "reliability/test_notices.py", "test_callback_state.py",
                 "test_precision.py", "test_docs.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        path = item.nodeid.split("::")[0].removeprefix("tests/")
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)
    items.sort(key=rank)  # (stable: each file's tests keep their order)


_COUNTS: dict[str, dict] = {}


def pytest_runtest_logreport(report):
    for name, counts in report.user_properties:
        if name == FAULTS:
            _COUNTS[report.nodeid.split("::")[-1]] = counts


def pytest_terminal_summary(terminalreporter):
    if not _COUNTS:
        return
    terminalreporter.section("reliability: faults injected")
    for test, counts in sorted(_COUNTS.items()):
        terminalreporter.write_line(f"{test}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
