"""What a run prints: Keras's progress and words by default (a terminal, a log file), STEP/EPOCH JSON
lines with --log-format json; the run dir's events.jsonl either way; plain-text --help."""
import json
import os
import pty
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import helpers

USER_JOB = str(helpers.ROOT / "tests" / "user_job.py")
JOB = ["--job", USER_JOB, "--examples", "256", "--epochs", "2", "--no-tensorboard", "--log-every-steps", "1"]
STEPS = 8  # steps per epoch of JOB
MACHINE_LINE = re.compile(r"^(STEP|EPOCH) |^\s*\{")


def _human_env() -> dict:
    env = helpers.env()
    env.pop("TRAINER_LOG_FORMAT", None)
    return env


def _events(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]


def _fields(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("event", "time")}


def _wait_for_event(run_dir, proc, accept, timeout=300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run_dir / "events.jsonl").exists() and any(accept(e) for e in _events(run_dir)):
            return
        assert proc.poll() is None, "the run ended before the event"
        time.sleep(0.05)
    raise AssertionError("timeout waiting for an event")


def _in_pty(args, env) -> tuple[int, str]:
    """Run the trainer with a pseudo-terminal as stdout and stderr; (exit code, everything shown)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child
        os.chdir(helpers.ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "trainer", *args], env)
    shown = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), shown.decode(errors="replace")


def test_a_log_file_gets_kerass_lines_and_words_json_on_request_and_events_always(tmp_path):
    """stdout to a file: a stop and its resume in words, with no JSON; the resumed start with
    --log-format json prints STEP/EPOCH lines; events.jsonl holds both starts' records."""
    run_dir, gate = tmp_path / "run", helpers.Gate(tmp_path / "gate")
    args = ["train", "--run-dir", str(run_dir), *JOB, "--gate", str(gate.path)]
    gate.allow(5)
    with open(tmp_path / "first.out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "trainer", *args], cwd=helpers.ROOT, env=_human_env(),
                                stdout=out, stderr=subprocess.PIPE, text=True)
        _wait_for_event(run_dir, proc, lambda e: e.get("global_step") == 5)
        proc.send_signal(signal.SIGTERM)
        gate.allow(10_000)
        _, err = proc.communicate(timeout=300)
    first = (tmp_path / "first.out").read_text()
    assert proc.returncode == 128 + signal.SIGTERM, first + err
    stop = helpers.stop_of(first)  # the stop lands at step 5's boundary or one step later
    assert stop[:3] in ((1, 5, STEPS), (1, 6, STEPS)) and "resume with: python -m trainer train" in first
    assert not [line for line in first.splitlines() if MACHINE_LINE.match(line)], first
    assert [line.split(" - ")[0].strip() for line in first.splitlines() if re.match(r"^\s*\d+/8 - loss: ", line)] \
        == [f"{n}/{STEPS}" for n in range(1, stop[1] + 1)]  # --log-every-steps 1 in words
    assert "; 1 CPU" in err and "Strategy" not in err

    resumed = subprocess.run([sys.executable, "-m", "trainer", *args, "--log-format", "json"], cwd=helpers.ROOT,
                             env=_human_env(), capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    steps = [json.loads(line[5:]) for line in resumed.stdout.splitlines() if line.startswith("STEP ")]
    epochs = [json.loads(line[6:]) for line in resumed.stdout.splitlines() if line.startswith("EPOCH ")]
    assert [s["global_step"] for s in steps] == list(range(stop[3] + 1, 2 * STEPS + 1))
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert "training complete: 2 epochs, global step 16, took " in resumed.stdout

    events = _events(run_dir)  # appended across both starts, the same records as the JSON lines
    kinds = [e["event"] for e in events]
    assert kinds == ["start", *["step"] * stop[3], "stop", "resume", *["step"] * (STEPS - stop[1]), "epoch",
                     *["step"] * STEPS, "epoch", "end"]
    assert [_fields(e) for e in events if e["event"] == "step"][stop[3]:] == steps
    assert [_fields(e) for e in events if e["event"] == "epoch"] == epochs
    assert _fields(events[kinds.index("stop")])["global_step"] == stop[3] == events[kinds.index("resume")][
        "global_step"]
    end = events[-1]
    model = run_dir / "model.keras"  # (named only if it was written: this job's model may not export)
    assert end["global_step"] == 16 and end["model"] == (str(model) if model.exists() else None)
    assert {k: v for k, v in end["metrics"].items() if k not in ("epoch", "lr")} == \
        {k: v for k, v in epochs[-1].items() if k not in ("epoch", "epochs", "global_step")}
    from trainer.commands import collect_status  # status reads the run beside its events file
    from trainer.storage import open_storage
    assert collect_status(open_storage(str(run_dir)))["latest"]["global_step"] == 16


def test_a_terminal_gets_kerass_progress_bar_and_a_summary_in_words(tmp_path):
    run_dir = tmp_path / "run"
    code, shown = _in_pty(["train", "--run-dir", str(run_dir), *JOB], _human_env())
    assert code == 0, shown
    lines = shown.replace("\r\n", "\n").split("\n")
    assert "Epoch 1/2" in lines and "Epoch 2/2" in lines
    assert "\x1b[32m━" in shown and f"{STEPS}/{STEPS}" in shown  # Keras's bar, drawn to its end
    assert not [line for line in lines if MACHINE_LINE.match(line.strip("\r"))], shown
    summary = shown[shown.index("training complete: 2 epochs, global step 16, took "):]
    assert re.search(r"\n  last epoch: loss: \d+\.\d{4} - accuracy: \d\.\d{4} - val_loss: \d+\.\d{4} - "
                     r"val_accuracy: \d\.\d{4} - lr: 0\.05\r?\n", summary), summary
    assert (f"  model: {run_dir / 'model.keras'}" in summary) == (run_dir / "model.keras").exists()
    assert f"next: python -m trainer status {run_dir} shows the run" in summary
    kinds = [e["event"] for e in _events(run_dir)]  # the steps too, though the terminal shows a bar
    assert kinds == ["start", *["step"] * STEPS, "epoch", *["step"] * STEPS, "epoch", "end"]


def test_help_is_plain_text():
    from trainer.cli import PlainHelp, build_parser, train_parser
    texts = [build_parser().format_help(), train_parser().format_help()]
    parser = subprocess_free_parser(PlainHelp)
    texts.append(parser.format_help())
    assert not [t for t in texts if "`" in t], texts
    assert "change it with python -m trainer lr" in texts[-1]


def subprocess_free_parser(formatter):
    import argparse
    parser = argparse.ArgumentParser(prog="x", formatter_class=formatter, description="``python -m trainer``")
    parser.add_argument("--lr", help="change it with `python -m trainer lr`")
    return parser


def test_log_format_from_the_environment_names_the_variable():
    from trainer.config import ConfigError, log_format_from
    assert log_format_from({}) == "human" and log_format_from({"TRAINER_LOG_FORMAT": "json"}) == "json"
    with pytest.raises(ConfigError, match=r"\$TRAINER_LOG_FORMAT must be one of human, json, got 'xml'"):
        log_format_from({"TRAINER_LOG_FORMAT": "xml"})
