"""The command line as a new user meets it: a clean first run, the console script, job flags in --help."""
import os
import re
import shutil
import subprocess
import sys

from tests import helpers

TF_NOISE = re.compile(r"absl::InitializeLog|cpu_feature_guard|oneDNN|^[IWE]\d{4} ", re.MULTILINE)


def test_first_run_prints_no_tensorflow_start_up_noise(tmp_path):
    env = {k: v for k, v in helpers.env().items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run([sys.executable, "-m", "trainer", "train", "--run-dir", str(tmp_path / "run"),
                             "--preset", "tiny", "--epochs", "1", "--train-size", "256", "--quiet"],
                            cwd=helpers.ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert not TF_NOISE.search(output), output
    assert "training complete: 1 epochs" in result.stdout


def test_tensorflow_is_imported_without_keras_extras_which_a_job_can_still_import():
    """`import tensorflow` loads scikit-learn, IPython and matplotlib through Keras when they
    are installed (scikit-learn and matplotlib are, here); a training process hides them during that
    import, and a job imports them afterwards as usual."""
    code = ("import sys; from trainer import cli; cli.import_tensorflow(quiet=True); "
            "print(sorted(name for name in cli.KERAS_EXTRAS if name in sys.modules)); "
            "import sklearn.datasets, matplotlib.pyplot, keras; print(sklearn.datasets.load_digits().data.shape)")
    result = subprocess.run([sys.executable, "-c", code], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["[]", "(1797, 64)"], result.stdout


def test_console_script_and_job_settings_in_help():
    script = shutil.which("trainer", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    assert script, "the `trainer` console script is not installed (pip install -e .)"
    result = subprocess.run([script, "train", "--job", str(helpers.ROOT / "jobs" / "digits.py"), "--help"],
                            cwd=helpers.ROOT, env=helpers.env(), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "settings of jobs/digits.py" in result.stdout and "--hidden INT" in result.stdout
    assert "--dropout FLOAT" in result.stdout and "--run-dir" in result.stdout and "--from" in result.stdout
    default = subprocess.run([script, "train", "--help"], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                             text=True, timeout=300)
    assert "{small,reference,tiny}" in default.stdout and "--stages A,B,..." in default.stdout
    assert default.stdout.startswith("usage: trainer train")




def test_a_signal_after_training_is_complete_does_not_change_the_exit_code(tmp_path):
    """SLURM's warning can come while a finished run shuts down (TensorFlow takes a second to),
    after Python has put the default handlers back: the process must still exit with 0 (done),
    not die of the signal, which slurm/train.sh would read as 128+N and requeue. Here the
    signal comes from the interpreter's own clean-up, after ``main`` has returned."""
    script = ("import os, signal, sys\n"
              "from trainer.cli import main\n"
              "class SignalAtShutdown:\n"
              "    def __del__(self, kill=os.kill, pid=os.getpid(), sig=signal.SIGUSR1):\n"
              "        kill(pid, sig)\n"
              "late = SignalAtShutdown()\n"
              f"sys.exit(main(['train', '--run-dir', {str(tmp_path / 'run')!r}, '--preset', 'tiny', '--epochs', '1', "
              "'--train-size', '256', '--quiet']))\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=helpers.ROOT, env=helpers.env(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "training complete: 1 epochs" in result.stdout


EXIT_HOOKS_JOB = '''
import atexit, sys
sys.path.insert(0, {folder!r})
from my_job import *                        # noqa: F401,F403
log = open({log!r}, "w")                    # left open: its buffer is written when the process ends
log.write("written, never flushed or closed")
atexit.register(lambda: open({hook!r}, "w").write("atexit hook ran"))
'''


def test_a_training_process_ends_at_once_yet_runs_atexit_hooks_and_flushes_open_files(tmp_path):
    """The trainer skips the interpreter's teardown of TensorFlow at the end of a run, not what
    an orderly exit does for a job: its atexit hooks, its open files' buffers."""
    job = helpers.user_job(tmp_path / "elsewhere")
    wrapper = job.parent / "hooked_job.py"
    log, hook = tmp_path / "job.log", tmp_path / "hook.txt"
    wrapper.write_text(EXIT_HOOKS_JOB.format(folder=str(job.parent), log=str(log), hook=str(hook)))
    result = helpers.run(["train", "--run-dir", str(tmp_path / "run"), "--job", str(wrapper), "--examples", "256",
                          "--epochs", "1", "--no-tensorboard", "--quiet"])
    assert result.returncode == 0, result.stderr
    assert log.read_text() == "written, never flushed or closed" and hook.read_text() == "atexit hook ran"
    assert "training complete: 1 epochs" in result.stdout
