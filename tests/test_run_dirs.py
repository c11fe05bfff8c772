"""Bad run dirs at every entry point: one line naming the path and what was expected, exit 2
(a wrong path) or 5 (a right path that cannot be read or written), nothing created, no traceback.

"Unreadable" and "read-only" need permissions that bind: as root (tests run as root here)
chmod alone binds nothing, so those commands run without CAP_DAC_OVERRIDE and
CAP_DAC_READ_SEARCH (``setpriv``), i.e. as a root that file modes do bind; without setpriv
those cases are skipped under root.
"""
import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import helpers
from tests.test_cli import TF_NOISE
from trainer import errors
from trainer.job import same_job

BAD, STORAGE = errors.BAD_INPUT, errors.STORAGE_ERROR
DROP_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def _missing(tmp):
    return str(tmp / "no-such-run")


def _file(tmp):
    (tmp / "notes.txt").write_text("not a run\n")
    return str(tmp / "notes.txt")


def _inside_a_file(tmp):
    (tmp / "notes.txt").write_text("not a run\n")
    return str(tmp / "notes.txt" / "run")


def _foreign(tmp):
    (tmp / "project" / "src").mkdir(parents=True)
    (tmp / "project" / "README.txt").write_text("another program's folder\n")
    return str(tmp / "project")


def _unreadable(tmp):
    (tmp / "locked").mkdir()
    (tmp / "locked" / "config.json").write_text("{}\n")  # a run, if one could read it
    (tmp / "locked").chmod(0)
    return str(tmp / "locked")


def _read_only(tmp):
    (tmp / "read-only").mkdir()
    (tmp / "read-only").chmod(0o555)
    return str(tmp / "read-only")


# kind: (make the path, needs binding permissions, expected code of: train-like commands
# (train, fit, launch, lr --create), commands that need a run (status, lr, export));
# None: the path is fine for that command
KINDS = {
    "missing": (_missing, False, None, BAD),
    "a file": (_file, False, BAD, BAD),
    "inside a file": (_inside_a_file, False, BAD, BAD),
    "URL without bucket": (lambda tmp: "s3://", False, BAD, BAD),
    "unknown protocol": (lambda tmp: "s4://bucket/run", False, BAD, BAD),
    "another program's folder": (_foreign, False, BAD, BAD),
    "unreadable": (_unreadable, True, STORAGE, STORAGE),
    "read-only": (_read_only, True, STORAGE, BAD),
}
TRAINING = {
    "train": lambda d, tmp: ["-m", "trainer", "train", "--run-dir", d, "--preset", "tiny", "--epochs", "1"],
    "lr --create": lambda d, tmp: ["-m", "trainer", "lr", d, "1e-3", "--create"],
    "launch": lambda d, tmp: [str(helpers.ROOT / "jobs" / "launch.py"), "--cluster", "local",
                              "--folder", str(tmp / "submitit"), "--", "--run-dir", d, "--preset", "tiny"],
}
NEEDS_RUN = {
    "status": lambda d, tmp: ["-m", "trainer", "status", d],
    "status --json": lambda d, tmp: ["-m", "trainer", "status", d, "--json"],
    "lr": lambda d, tmp: ["-m", "trainer", "lr", d, "1e-3"],
    "export": lambda d, tmp: ["-m", "trainer", "export", d, str(tmp / "out.keras")],
}
CASES = [(command, kind) for kind, (_, _, train_code, run_code) in KINDS.items()
         for command in [*TRAINING, *NEEDS_RUN]
         if (train_code if command in TRAINING else run_code) is not None]


def _prefix(binding: bool) -> list[str]:
    """How to run a command so that file modes bind it (see the module docstring)."""
    if not binding or os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file modes cannot be made to bind")
    return DROP_DAC


def _listing(path: str):
    try:
        return sorted(os.listdir(path)) if os.path.isdir(path) else open(path, "rb").read()
    except (FileNotFoundError, NotADirectoryError):
        return None


@pytest.fixture
def bad_dir(tmp_path, request):
    """(kind) -> (path, prefix): a bad run dir of that kind, modes restored afterwards."""
    made = []

    def make(kind):
        build, binding, *_ = KINDS[kind]
        prefix = _prefix(binding)
        path = build(tmp_path)
        made.append(path)
        return path, prefix
    yield make
    for path in made:
        if os.path.isdir(path):
            os.chmod(path, 0o755)


@pytest.mark.parametrize(("command", "kind"), CASES)
def test_every_command_refuses_a_bad_run_dir_in_one_line(bad_dir, tmp_path, command, kind):
    path, prefix = bad_dir(kind)
    expected = KINDS[kind][2] if command in TRAINING else KINDS[kind][3]
    args = {**TRAINING, **NEEDS_RUN}[command](path, tmp_path)
    before = _listing(path)  # this process keeps its capabilities: it can always look
    result = subprocess.run([*prefix, sys.executable, *args], cwd=tmp_path, env=helpers.env(),
                            capture_output=True, text=True, timeout=120)
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == expected, output
    assert len(output.splitlines()) == 1 and "Traceback" not in output, output
    assert path.rstrip("/") in output or os.path.abspath(path) in output, output
    assert "expected" in output or "ermission denied" in output or "not writable" in output, output
    if command == "status --json":
        assert json.loads(output)["error"] in output
    assert _listing(path) == before
    assert not (tmp_path / "submitit").exists()  # the launcher submitted nothing


def test_fit_refuses_every_bad_run_dir_with_a_result_not_a_traceback(tmp_path):
    """trainer.fit returns the same exit codes in its Result and logs one line per bad run dir
    (one process for every kind: the imports are paid once)."""
    binding = [k for k, (_, needs, _, _) in KINDS.items() if needs]
    prefix = DROP_DAC if os.geteuid() == 0 and shutil.which("setpriv") else []
    kinds = [k for k, (_, needs, code, _) in KINDS.items() if code is not None and (prefix or not needs
                                                                                     or os.geteuid() != 0)]
    paths = {}
    for kind in kinds:
        folder = tmp_path / kind.replace(" ", "-").replace("'", "")
        folder.mkdir()
        paths[kind] = KINDS[kind][0](folder)
    script = ("import json, sys, trainer\n"
              f"for kind, path in {paths!r}.items():\n"
              "    print('CASE', kind, file=sys.stderr, flush=True)\n"
              "    result = trainer.fit(path, preset='tiny', epochs=1, quiet=True)\n"
              "    print(json.dumps([kind, result.exit_code]), flush=True)\n")
    try:
        result = subprocess.run([*prefix, sys.executable, "-c", script], cwd=tmp_path, env=helpers.env(),
                                capture_output=True, text=True, timeout=300)
    finally:
        for kind in binding:
            if kind in paths:
                os.chmod(paths[kind], 0o755)
    assert result.returncode == 0, result.stderr
    codes = dict(json.loads(line) for line in result.stdout.splitlines())
    assert codes == {kind: KINDS[kind][2] for kind in kinds}
    logs = result.stderr.split("CASE ")[1:]
    assert len(logs) == len(kinds), result.stderr
    for kind, log in zip(kinds, logs):
        lines = [line for line in log.strip().splitlines() if not TF_NOISE.search(line)]  # the first import's
        assert lines[0] == kind and len(lines) == 2 and lines[1].startswith("[trainer] ERROR "), log
        assert paths[kind].rstrip("/") in lines[1] or os.path.abspath(paths[kind]) in lines[1], log


def test_lr_on_a_path_without_a_run_needs_create(tmp_path):
    typo = tmp_path / "runs" / "typo"
    refused = helpers.run(["lr", str(typo), "1e-3"])
    assert refused.returncode == BAD and "--create" in refused.stdout, refused.stdout
    assert not typo.exists()
    created = helpers.run(["lr", str(typo), "1e-3", "--create"])
    assert created.returncode == 0 and "no run there yet: --create" in created.stdout, created.stdout
    assert (typo / "lr_override").read_text() == "1e-3\n"
    again = helpers.run(["lr", str(typo), "2e-3", "--at-epoch", "1"])  # the path now holds no run still
    assert again.returncode == BAD, again.stdout


def test_an_example_recorded_by_its_path_is_the_same_job_as_its_name():
    """Runs started before the examples had names recorded the default job's file path."""
    fashion = str(helpers.ROOT / "jobs" / "fashion_mnist.py")
    assert same_job(fashion, "fashion_mnist") and same_job("fashion_mnist", fashion)
    assert same_job("digits", "digits") and not same_job("fashion_mnist", "digits")
    assert not same_job("fashion_mnist", str(helpers.ROOT / "jobs" / "digits.py"))
    assert not same_job("/elsewhere/fashion_mnist.py", "fashion_mnist") and not same_job(None, "fashion_mnist")
