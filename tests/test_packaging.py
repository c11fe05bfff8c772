"""The package installs whole: a wheel built from the repo, installed into a fresh virtual
environment and run from a folder outside the repo, trains the default job, lists the
example jobs at paths inside that environment and loads a copied one; an editable
install finds them in the checkout.

The venv sees the system's packages (TensorFlow is not downloaded again) and the wheel is
installed without dependencies; the test asserts that ``trainer`` itself is imported from the
venv, not from this checkout.
"""
import json
import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests import helpers

SOURCES = ("pyproject.toml", "README.md", "trainer", "jobs")
EXAMPLES = ("fashion_mnist", "digits", "fashion_mnist_files")  # the default first, then by name


def _run(cmd, cwd, **kw):
    env = {k: v for k, v in helpers.env().items() if k != "PYTHONPATH"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, **kw)
    assert result.returncode == 0, f"{cmd}\n{result.stdout}\n{result.stderr}"
    return result


def _copy_sources(target):
    """The files a build reads, copied: building writes build/ and *.egg-info beside them."""
    target.mkdir()
    for name in SOURCES:
        if (helpers.ROOT / name).is_dir():
            shutil.copytree(helpers.ROOT / name, target / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(helpers.ROOT / name, target / name)
    return target


def _venv_with(base, *install_args):
    """A fresh venv (seeing the system's packages) with ``pip install --no-deps <install_args>``."""
    env_dir = base / "venv"
    venv.EnvBuilder(system_site_packages=True, with_pip=False).create(env_dir)
    _run([sys.executable, "-m", "pip", "--python", str(env_dir / "bin" / "python"), "install", "--no-deps",
          *install_args], cwd=base)
    work = base / "work"
    work.mkdir()
    return env_dir, work


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(venv folder, a work folder outside the repo) with the wheel of this checkout installed."""
    base = tmp_path_factory.mktemp("wheel")
    source = _copy_sources(base / "source")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
          str(source)], cwd=base)
    wheel, = (base / "dist").glob("keras_resume-*.whl")
    return _venv_with(base, str(wheel))


def test_editable_install_finds_the_example_jobs_in_the_checkout(tmp_path):
    source = _copy_sources(tmp_path / "checkout")
    env_dir, work = _venv_with(tmp_path, "--no-build-isolation", "-e", str(source))
    listed = json.loads(_run([str(env_dir / "bin" / "trainer"), "jobs", "--json"], work).stdout)
    assert [j["path"] for j in listed] == [str(source / "jobs" / f"{name}.py") for name in EXAMPLES]
    where = _run([str(env_dir / "bin" / "python"), "-c", "import trainer.jobs; print(trainer.jobs.__file__)"], work)
    assert where.stdout.strip() == str(source / "jobs" / "__init__.py")


def test_wheel_lists_its_example_jobs_inside_the_venv(installed):
    env_dir, work = installed
    site = _run([str(env_dir / "bin" / "python"), "-c", "import trainer, sys; print(trainer.__file__)"], work)
    assert site.stdout.strip().startswith(str(env_dir)), site.stdout
    listed = json.loads(_run([str(env_dir / "bin" / "trainer"), "jobs", "--json"], work).stdout)
    assert [j["name"] for j in listed] == list(EXAMPLES) and listed[0]["default"]
    for job in listed:
        assert job["path"].startswith(str(env_dir)) and os.path.isfile(job["path"]), job
    assert [os.path.basename(p) for p in listed[0]["needs"]] == ["fashion_mnist_idx.py"]
    human = _run([str(env_dir / "bin" / "trainer"), "jobs"], work).stdout
    assert "fashion_mnist (default)" in human and listed[1]["path"] in human


def test_wheel_trains_the_default_job_and_a_copied_template_outside_the_repo(installed):
    env_dir, work = installed
    trainer = str(env_dir / "bin" / "trainer")
    tiny = ["--preset", "tiny", "--train-size", "256", "--val-size", "64", "--epochs", "1", "--quiet",
            "--no-tensorboard"]
    queued = _run([trainer, "lr", "runs/x", "0.02", "--create"], work)  # queued before the first start
    assert "no run there yet: --create" in queued.stdout
    result = _run([trainer, "train", "--run-dir", "runs/x", *tiny], work)
    assert "job fashion_mnist:" in result.stderr and "learning rate 0.05 -> 0.02" in result.stderr, result.stderr
    assert "training complete: 1 epochs, global step 8" in result.stdout
    config_file = work / "runs" / "x" / "config.json"
    config = json.loads(config_file.read_text())
    assert config["job"] == config["identity"]["job"] == "fashion_mnist"
    assert (work / "runs" / "x" / "model.keras").is_file()

    # runs started before the examples had names recorded the file's path: still the same job
    listed = json.loads(_run([trainer, "jobs", "--json"], work).stdout)
    config["job"] = config["identity"]["job"] = listed[0]["path"]
    config_file.write_text(json.dumps(config))
    again = _run([trainer, "train", "--run-dir", "runs/x", *tiny], work)
    assert "training already complete" in again.stdout, again.stderr
    assert json.loads(config_file.read_text())["job"] == "fashion_mnist"

    template = work / "mine"
    template.mkdir()
    for path in [listed[0]["path"], *listed[0]["needs"]]:
        shutil.copy(path, template)
    own = _run([trainer, "train", "--job", "mine/fashion_mnist.py", "--help"], work)
    assert "settings of mine/fashion_mnist.py" in own.stdout and "--train-size" in own.stdout

