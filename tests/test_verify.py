"""``trainer verify`` on jobs that resume exactly (it passes) and on jobs that do not (it fails and
names the cause). Every verdict is bitwise: the stops land wherever they land."""
import json
import re

import pytest

from tests import helpers

FLAWED = str(helpers.ROOT / "tests" / "flawed_job.py")
# the callback-state warning of the trainer (see README: Check a new job with verify)


def verify(*args):
    result = helpers.run(["verify", *args], timeout=900)
    return result.returncode, result.stdout + result.stderr


def test_verify_passes_on_digits():
    code, out = verify("--job", "jobs/digits.py", "--steps", "60", "--stops", "2", "--stop-seed", "5")
    assert code == 0, out
    assert "interrupted run: 60 steps; signals once it reports global steps" in out
    assert "uninterrupted run done: global step 60 (1 epochs and 13 steps)" in out  # --max-steps ends it
    assert "PASSED: all 26 variables bitwise equal after 60 steps" in out


def test_verify_passes_on_the_reference_job_tiny():
    code, out = verify("--preset", "tiny", "--train-size", "512", "--val-size", "64", "--epochs", "2",
                       "--steps", "24", "--stops", "1", "--stop-seed", "3")
    assert code == 0, out
    assert "interrupted run: 24 steps;" in out and "bitwise equal after 24 steps" in out


def test_verify_names_data_that_is_not_deterministic():
    code, out = verify("--job", FLAWED, "--flaw", "unseeded-data", "--steps", "30", "--stops", "1",
                       "--stop-seed", "3")
    assert code == 1, out
    assert "FAILED: " in out and "model/sequential/dense/kernel: " in out
    assert "likely cause: the job is not deterministic: two uninterrupted runs already differ" in out


def test_verify_names_a_callback_with_state_and_no_protocol():
    # the signal is requested at step 4 of 40: the resumed run always has steps left, in which the
    # callback's counter (restarted at 0) sets another learning rate
    code, out = verify("--job", FLAWED, "--flaw", "stateful-callback", "--steps", "40", "--stops", "1",
                       "--stop-seed", "2")
    assert "signals once it reports global steps 4\n" in out
    assert code == 1, out
    assert "optimizer/sgd/learning_rate: " in out and "model/sequential/dense/kernel: " in out
    assert "not deterministic" not in out  # a second uninterrupted run is equal to the first
    assert "likely cause: a callback keeps state in its attributes without the state protocol" in out


def test_verify_resumes_a_sharded_pipeline_on_another_worker_count(tmp_path):
    # 12 files of 20 records, batches of 24: 12 logical shards of micro-batches of 2, 10 steps per
    # epoch. The stop is asked for at global step 4; two workers agree on it every 8 steps, so it
    # lands at step 8 or 16, mid-pass, and the run resumes on 3 workers (4 shards each)
    from tests import ledger_job
    ledger_job.write_files(tmp_path / "files", [20] * 12)
    code, out = verify("--job", str(helpers.ROOT / "tests" / "ledger_job.py"), "--source", "files", "--files",
                       str(tmp_path / "files"), "--batch-size", "24", "--ledger", str(tmp_path / "ledger.txt"),
                       "--epochs", "3", "--steps", "30", "--stops", "1", "--stop-seed", "14", "--workers", "2",
                       "--resume-workers", "3", "--keep", "--work-dir", str(tmp_path / "work"))
    assert code == 0, out
    assert "signals once it reports global steps 4\n" in out and "; resumed on 3 workers\n" in out
    assert ("uninterrupted run (2 workers, global steps 1-30): worker 0: 360 records (shards 0-5 of 12), worker 1: "
            "360 records (shards 6-11 of 12); each within one batch (12) of an even share (360)") in out
    assert "worker 2: " in out and " records (shards 8-11 of 12); each within one batch (8) of an even share" in out
    assert ("PASSED: every record of each pass of each logical shard trained exactly once after 30 steps with "
            "1 stop resumed on 3 workers") in out
    assert "the weights are not compared bitwise" in out
    # the data check read what the workers trained: the ledger's ids of every step and worker (both runs
    # append to it; a 2-worker step has 12 ids a worker, a 3-worker step 8)
    stop = int(re.search(r"stop 1: SIGTERM at epoch \d+ step \d+/\d+ \(global step (\d+)\)", out)[1])
    reads = json.loads(next((tmp_path / "work").glob("*/data-check-reads.json")).read_text())
    simulated = _worker_ids(reads["uninterrupted"]["reads"], lambda step: 2, tmp_path / "files")
    simulated.update(_worker_ids(reads["interrupted"]["reads"], lambda step: 2 if step < stop else 3,
                                 tmp_path / "files"))
    trained = {}
    for line in (tmp_path / "ledger.txt").read_text().splitlines():
        step, replica, ids = line.split()
        trained.setdefault((int(step), 24 // len(ids.split(",")), int(replica)), set()).add(ids)
    assert trained == {key: {",".join(map(str, ids))} for key, ids in simulated.items()}


def _worker_ids(reads, workers_at, files) -> dict:
    """{(step, workers, worker): ids} of the data check's reads (12 shards, each worker its block)."""
    import tensorflow as tf

    from tests import ledger_job
    from trainer.verify.simulate import fingerprints
    ids = {}
    for record in tf.data.TFRecordDataset(sorted(str(p) for p in files.glob("*.tfrecord"))):
        x, y = ledger_job._parse(record)
        ids[fingerprints((x[None], y[None]))[0]] = int(x[0])
    found = {}
    for step, shard, _, prints in reads:
        workers = workers_at(step)
        found.setdefault((step, workers, shard // (12 // workers)), []).extend(ids[p] for p in prints)
    return found


def _reads(passes):
    """Reads of one shard, two examples a step: ``passes`` lists each pass's fingerprints."""
    reads, step = [], 0
    for number, fingerprints in enumerate(passes, 1):
        for i in range(0, len(fingerprints), 2):
            reads.append([step, 0, number, fingerprints[i:i + 2]])
            step += 1
    return reads


def test_the_data_check_finds_a_record_trained_twice_or_lost_in_a_pass():
    from trainer.verify.records import differences
    reference = _reads([["a", "b", "c", "d"], ["d", "c", "b", "a"], ["b", "a"]])
    assert differences(reference, _reads([["a", "b", "c", "d"], ["c", "a", "d", "b"], ["a", "b"]]), False) == []
    doubled = differences(reference, _reads([["a", "b", "c", "d"], ["d", "c", "d", "a"], ["b", "a"]]), False)
    assert doubled == ["logical shard 0, pass 2: 1 record trained twice, 1 record of the pass not trained"]
    assert differences(reference, _reads([["a", "b", "c", "d"], ["d", "c", "b", "a"], ["b", "b"]]), False) == [
        "logical shard 0, pass 3: 1 record trained twice"]  # (a last pass, maybe partial: doubles only)
    assert differences(reference, _reads([["a", "b", "c", "d"], ["c", "a", "d", "b"], ["a", "b"]]), True) == [
        "global step 3: other examples than the uninterrupted run's",
        "global step 4: other examples than the uninterrupted run's",
        "global step 5: other examples than the uninterrupted run's"]
    shifted = differences(reference, _reads([["a", "b", "c", "d", "e", "f"], ["d", "c", "b", "a"]]), False)
    assert shifted[0].startswith("global step 3: the shards' passes or micro-batch sizes differ"), shifted


def test_verify_reports_each_workers_share_or_that_every_worker_reads_it_whole(capsys):
    from trainer.verify.shares import report_shares
    share = "[trainer] INFO worker {} read {} records of its share of job j.py: data (shards {}-{} of 12)\n"
    stop = "[trainer] SIGTERM received: stopped at epoch 1 step 8/8 (global step 8); checkpoint ckpt-1 (0.1s)\n"
    report_shares(_run_with("", [[share.format(0, 240, 0, 5), share.format(1, 200, 6, 11)]]), 20)
    whole = ("[trainer] WARNING job j.py: data is read whole by each of the 2 workers: it cannot be split among "
             "them (its length is unknown, ...)\n")
    report_shares(_run_with(stop, [[stop + whole, whole], ["", ""]]), 20)
    assert capsys.readouterr().out.splitlines() == [
        ("verify: uninterrupted run (2 workers, global steps 1-20): worker 0: 240 records (shards 0-5 of 12), "
         "worker 1: 200 records (shards 6-11 of 12); uneven: worker 0 +20, worker 1 -20 records from an even share "
         "(220), more than one batch (11)"),
        ("verify: uninterrupted run, start 1 (2 workers, global steps 1-8): the training data is not read in "
         "logical shards of files: every worker reads all of it; it cannot be split among them (its length is "
         "unknown, ...)")]


@pytest.mark.parametrize("args, expected", [
    (["--run-dir", "x"], "--run-dir: verify chooses it itself"),
    (["--steps", "1"], "--steps: must be >= 2"),
    (["--stops", "5", "--steps", "5"], "--stops: 5 stops need more than 5 --steps"),
    (["--workers", "0"], "--workers: must be >= 1, got 0"),
    (["--resume-workers", "0"], "--resume-workers: must be >= 1, got 0"),
])
def test_verify_bad_input_exits_2(args, expected):
    code, out = verify(*args)
    assert code == 2 and expected in out, out


def test_max_steps_ends_mid_epoch_and_a_later_start_continues_exactly(tmp_path, uninterrupted):
    from tests.test_resume import DIGITS  # the same arguments share the uninterrupted digits run
    reference = uninterrupted("digits", DIGITS)
    run_dir = tmp_path / "run"
    limited = helpers.run(["train", "--run-dir", str(run_dir), *DIGITS, "--quiet", "--max-steps", "60"])
    assert limited.returncode == 0, limited.stdout + limited.stderr
    assert "training complete (--max-steps 60): 1 epochs, global step 60," in limited.stdout
    latest = json.loads(helpers.run(["status", str(run_dir), "--json"]).stdout)["latest"]
    assert (latest["global_step"], latest["reason"]) == (60, "step limit")
    rest = helpers.run(["train", "--run-dir", str(run_dir), *DIGITS, "--quiet"])
    assert rest.returncode == 0, rest.stdout + rest.stderr
    assert "at epoch 2 step 13/47 (global step 60)" in rest.stderr
    assert "training complete: 3 epochs, global step 141," in rest.stdout
    helpers.assert_bitwise_equal(helpers.latest_variables(reference), helpers.latest_variables(run_dir))


# -- the causes verify reads from the runs' output (unit tests of that seam, no training) --
def _run_with(output, workers=()):
    from pathlib import Path

    from trainer.verify.runs import Run
    return Run("uninterrupted", Path("unused"), [output], list(workers))


@pytest.mark.parametrize("warning, cause", [
    (("[trainer] WARNING callback LrDecay has state (batches) and no get_state/set_state: its state restarts "
      "at each resume"), "a callback keeps state in its attributes without the state protocol"),
    (("[trainer] WARNING job x.py: build_data's training data is a plain tf.data.Dataset: a resumed epoch "
      "skips the batches already trained on"), "the training data is a plain tf.data.Dataset"),
    ("[trainer] WARNING the pipeline cannot be checkpointed (py_function); resumed epochs skip batches",
     "the tf.data pipeline cannot be checkpointed"),
])
def test_verify_names_the_cause_a_start_up_warning_gives(warning, cause):
    from trainer.verify.plan import Plan
    from trainer.verify.report import causes as find_causes
    plan = Plan([], 10, 1, 0, helpers.ROOT)
    causes = find_causes([], [_run_with(f"[trainer] INFO start-up\n{warning}\nSTEP {{}}\n")], plan)
    assert len(causes) == 1 and causes[0].startswith(cause), causes
    assert find_causes([], [_run_with("[trainer] INFO start-up\n")], plan)[0].startswith("none the runs report")


def test_verify_names_an_op_that_determinism_refuses():
    from trainer.verify.runs import run_failed
    output = ("Traceback (most recent call last):\n  ...\ntensorflow.python.framework.errors_impl.UnimplementedError: "
              "A deterministic GPU implementation of SparseSoftmaxXentWithLogitsOp is not currently available.\n")
    error = run_failed(_run_with(output), 1)
    assert error.exit_code == 1 and "likely cause: TF op determinism (on by default) refuses an op" in str(error)
    assert "likely cause" not in str(run_failed(_run_with("Traceback ...\nValueError: bad shape\n"), 1))


def test_verify_exits_2_when_train_refuses_the_job_or_its_flags():
    from trainer.verify.runs import run_failed
    refused = "[trainer] ERROR --hidden: 'many' is not a valid int (invalid literal for int() with base 10)\n"
    error = run_failed(_run_with(refused), 2)
    assert error.exit_code == 2 and "`train` refused the job or its flags (exit 2)" in str(error)
    assert "--hidden: 'many' is not a valid int" in str(error)
