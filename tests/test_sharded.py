"""Sharded reading of a streamed pipeline (trainer.data.sharded): every worker reads only its
logical shards of the files, and a run stays exact across stops, kills and worker counts.

Real TF_CONFIG workers on 127.0.0.1, real signals, the ledger job's TFRecord pipeline (a file
shuffle, interleave, a reshuffling shuffle buffer, a parallel parse; tests/ledger_job.py), whose
train step writes down the ids every worker trained at every global step. Files hold ids in
file order, so an id names its file, and a file its shard (shard k reads files k, k + L, ...).
Random stops draw from a seed in the test's report section (SHARDED_SEED=n repeats them).
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests import helpers, ledger_job
from trainer import errors
from trainer.checkpoint.index import DIR, committed

JOB = str(helpers.ROOT / "tests" / "ledger_job.py")
EPOCHS = ledger_job.EPOCHS
SAVE_EVERY = 4  # periodic saves: a kill finds a commit a few steps back, mid-epoch
FROZEN_S = 2  # how long the chief waits for a frozen worker 1 before it is killed (any wait: the same outcome)
RESUMED = re.compile(r"resumed from \S+/ckpt-\d+ at epoch \d+ step \d+/(?:\d+|unknown) \(global step (\d+)\)")


@dataclass(frozen=True)
class Files:
    """TFRecord files of ``sizes`` records (ids 0.. in file order), read in batches of ``batch``."""
    folder: Path
    sizes: tuple[int, ...]
    batch: int

    @property
    def total(self) -> int:
        return sum(self.sizes)

    @property
    def steps_per_epoch(self) -> int:
        return -(-self.total // self.batch)

    def ids(self, file: int) -> set[int]:
        start = sum(self.sizes[:file])
        return set(range(start, start + self.sizes[file]))

    def shard_ids(self, shard: int, shards: int) -> set[int]:
        """The records of logical shard ``shard`` of ``shards``: its files are shard, shard + shards, ..."""
        return set().union(*(self.ids(f) for f in range(shard, len(self.sizes), shards)))

    def micro(self, shard: int, shards: int) -> int:
        """The shard's part of every global batch: the batch split as evenly as possible, larger parts first."""
        return self.batch // shards + (shard < self.batch % shards)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Files]:
    """uneven: 7 files of unequal length in batches of 14; two workers split them, by default, into
    6 logical shards (7 files rounded down to a multiple of 2): shard 0 reads files 0 and 6, and
    takes 3 records a step as shard 1 does, shards 2-5 take 2. Every shard's records are a multiple
    of its part, so no pass ends in a short part, but passes end at other steps than epochs do.
    even: 12 files of 48 records in batches of 24 read in 12 shards: an epoch is one pass of each.
    small: the same, 24 records a file: 12 steps an epoch."""
    root = tmp_path_factory.mktemp("sharded-files")
    sets = {"uneven": Files(root / "uneven", (80, 54, 48, 60, 32, 52, 40), 14),
            "even": Files(root / "even", (48,) * 12, 24),
            "small": Files(root / "small", (24,) * 12, 24)}
    for data in sets.values():
        ledger_job.write_files(data.folder, list(data.sizes))
    return sets


def _train(run_dir, data: Files, ledger, *extra) -> list[str]:
    return ["train", "--run-dir", str(run_dir), "--job", JOB, "--source", "files", "--files", str(data.folder),
            "--batch-size", str(data.batch), "--ledger", str(ledger), "--no-tensorboard", "--no-export", *extra]


def _start(args, workers: int):
    """``workers`` TF_CONFIG workers, or one plain process."""
    return helpers.start_workers(args, workers) if workers > 1 else [helpers.start(args)]


def _seed() -> int:
    return int(os.environ.get("SHARDED_SEED") or random.SystemRandom().randrange(2**32))


# -- what the ledger must show ------------------------------------------------------------------------
def _assert_workers_read_their_shards(ledger, steps, data: Files, shards: int, workers: int) -> None:
    """At every one of ``steps``, each worker trained its own shards' parts, in shard order, whole:
    worker w's shards are w * L/W .. (w + 1) * L/W - 1."""
    per = shards // workers
    for step in steps:
        assert sorted(ledger[step]) == list(range(workers)), f"step {step}: workers {sorted(ledger[step])}"
        for worker, ids in ledger[step].items():
            at = 0
            for shard in range(worker * per, (worker + 1) * per):
                part = ids[at:at + data.micro(shard, shards)]
                at += data.micro(shard, shards)
                assert len(part) == data.micro(shard, shards) and set(part) <= data.shard_ids(shard, shards), \
                    f"step {step} worker {worker}: {ids} (shard {shard} of {shards})"
            assert at == len(ids), f"step {step} worker {worker}: {ids}"


def _assert_every_epoch_exactly_once(ledger, data: Files) -> None:
    assert sorted(ledger) == list(range(EPOCHS * data.steps_per_epoch))
    for epoch in range(EPOCHS):
        steps = range(epoch * data.steps_per_epoch, (epoch + 1) * data.steps_per_epoch)
        trained = sorted(i for step in steps for ids in ledger[step].values() for i in ids)
        assert trained == list(range(data.total)), f"epoch {epoch + 1}"


def _shard_sequence(ledger, data: Files, shard: int, shards: int, workers: int) -> list[int]:
    """The ids shard ``shard`` gave, step after step."""
    per = shards // workers
    worker = shard // per
    begin = sum(data.micro(k, shards) for k in range(worker * per, shard))
    return [i for step in sorted(ledger) for i in ledger[step][worker][begin:begin + data.micro(shard, shards)]]


def _assert_consecutive_passes(sequence: list[int], records: set[int]) -> None:
    """Whole passes over the shard's records, each record once a pass, then part of the next."""
    for begin in range(0, len(sequence), len(records)):
        chunk = sequence[begin:begin + len(records)]
        assert len(set(chunk)) == len(chunk) and set(chunk) <= records, f"pass {begin // len(records) + 1}: {chunk}"


# -- an uninterrupted run: what each worker reads -----------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory, files):
    """Two workers through the uneven files, uninterrupted: (run dir, ledger, outputs)."""
    tmp = tmp_path_factory.mktemp("sharded-reference")
    args = _train(tmp / "run", files["uneven"], tmp / "ledger.txt", "--save-every-steps", str(SAVE_EVERY), "--quiet")
    results = helpers.finish(helpers.start_workers(args, 2))
    assert [code for code, _ in results] == [0, 0], results
    return tmp / "run", ledger_job.read(tmp / "ledger.txt"), [out for _, out in results]


def test_unequal_files_keep_every_worker_in_step_and_every_shard_in_passes(files, reference):
    """Files of unequal length: each of the 6 shards (the default for 2 workers and 7 files; shard 0
    reads files 0 and 6) opens its next pass as soon as one ends, so every global step has both
    workers' whole parts (nobody waited or ran dry), every epoch has the pipeline's number of steps,
    and along each shard its records come in consecutive passes, each record once a pass."""
    data = files["uneven"]
    run_dir, ledger, outputs = reference
    for worker, shards in ((0, "0-2"), (1, "3-5")):
        assert f"in 6 logical shards of its 7 files; this worker reads shards {shards}" in outputs[worker], outputs[worker]
    assert sorted(ledger) == list(range(EPOCHS * data.steps_per_epoch))
    _assert_workers_read_their_shards(ledger, ledger, data, 6, 2)
    history = json.loads((run_dir / "history.json").read_text())
    assert [e["global_step"] for e in history["epochs"]] == [data.steps_per_epoch * (e + 1) for e in range(EPOCHS)]
    for shard in range(6):
        sequence = _shard_sequence(ledger, data, shard, 6, 2)
        assert len(sequence) == EPOCHS * data.steps_per_epoch * data.micro(shard, 6)
        _assert_consecutive_passes(sequence, data.shard_ids(shard, 6))


# -- stops and kills resume bitwise --------------------------------------------------------------------
def _outputs(procs, head: dict | None = None, timeout=300) -> tuple[list[int], list[str]]:
    """Every process's exit code and output (``head``: what the test read already, by worker)."""
    results = helpers.finish(procs, timeout=timeout)
    return [code for code, _ in results], [(head or {}).get(w, "") + out for w, (_, out) in enumerate(results)]


def _resumed_at(outputs: list[str]) -> int:
    """The global step every worker resumed at (they agree)."""
    steps = {int(m.group(1)) for m in (RESUMED.search(out) for out in outputs) if m}
    assert len(steps) == 1 and all(RESUMED.search(out) for out in outputs), [out[-2000:] for out in outputs]
    return steps.pop()


def _assert_restored_shards(outputs: list[str], shards: int) -> None:
    """Each worker of a resume restored its block of the checkpoint's shards; none skipped a batch."""
    per = shards // len(outputs)
    for worker, out in enumerate(outputs):
        owned = f"{worker * per}-{(worker + 1) * per - 1}"
        assert f"restored logical shards {owned} of {shards} of" in out and "skipping" not in out, out


def _assert_every_commit_has_every_shard(run_dir: Path, shards: int) -> list[int]:
    """Every committed checkpoint's ``data/iterator`` holds the positions and states of all shards."""
    import tensorflow as tf

    from trainer.data import sharded
    folder = run_dir / DIR
    numbers = committed(os.listdir(folder))
    for number in numbers:
        reader = tf.train.load_checkpoint(str(folder / f"ckpt-{number}"))
        key = next(k for k in reader.get_variable_to_shape_map() if "data" in k and "iterator" in k)
        record = sharded.unpack(reader.get_tensor(key))
        assert record["shards"] == shards and len(record["positions"]) == shards, (number, record["positions"])
        assert len(record["states"]) == shards and all(record["states"]), f"ckpt-{number}: a shard has no state"
    return numbers


def _stops_report(seed: int, events: list[str]) -> str:
    return f"random.Random({seed}) drew the moments; " + "; ".join(events)


def test_stops_and_kills_resume_bitwise(tmp_path, files, reference, request):
    """Two workers through the uneven files, in four starts, each resuming where the last left off:
    SIGTERM to one worker at a random step (the other learns it at the next agreement, and both
    stop there); SIGKILL to both at a random step (back to the last commit: periodic saves every 4
    steps, epoch ends, the stop's); worker 1 frozen (SIGSTOP) right after a step with a save, so
    that the chief waits for its shards' states in the save's gather, then killed (the chief exits
    6); then to the end. Every commit holds all shards' states, every resume restores them (nothing
    skipped), the weights end bitwise equal to the uninterrupted run's, and the ledger of the steps
    kept equals the uninterrupted run's, step by step, worker by worker."""
    data = files["uneven"]
    total = EPOCHS * data.steps_per_epoch
    reference_dir, reference_ledger, _ = reference
    seed, events = _seed(), []
    rng = random.Random(seed)
    run_dir = tmp_path / "run"

    def start(stage: int, *extra):
        return helpers.start_workers(_train(run_dir, data, tmp_path / f"ledger-{stage}.txt", "--save-every-steps",
                                            str(SAVE_EVERY), *extra), 2)
    resumes = [0]  # the global step each start began at
    try:
        # 1: SIGTERM to one worker
        procs = start(1, "--log-every-steps", "1")
        target, who = rng.randint(1, 20), rng.randrange(2)
        out, reached = helpers.wait_for_step(procs[0], target)
        assert reached is not None, out
        procs[who].send_signal(signal.SIGTERM)
        codes, outputs = _outputs(procs, {0: out})
        assert codes == [128 + signal.SIGTERM] * 2, outputs
        stops = [helpers.stop_of(o) for o in outputs]
        assert stops[0] == stops[1] and target <= stops[0][3] < total, stops
        events.append(f"SIGTERM to worker {who} at step {reached}, both stopped at global step {stops[0][3]}")

        # 2: SIGKILL to both
        procs = start(2, "--log-every-steps", "1")
        out, reached = helpers.wait_for_step(procs[0], stops[0][3] + rng.randint(1, 12))
        assert reached is not None, out
        for proc in procs:
            proc.kill()
        codes, outputs = _outputs(procs, {0: out})
        assert codes == [-signal.SIGKILL] * 2, outputs
        resumes.append(_resumed_at(outputs))
        assert resumes[-1] == stops[0][3]
        _assert_restored_shards(outputs, 6)
        events.append(f"resumed, SIGKILL to both at step {reached}")

        # 3: worker 1 frozen in a save, then killed
        procs = start(3, "--log-every-steps", "1")
        out1 = helpers.wait_for(procs[1], "resumed from")
        resumes.append(_resumed_at([out1]))  # (the last commit: at most the step killed at, perhaps after it)
        frozen_at = -(-(resumes[-1] + rng.randint(1, 8)) // SAVE_EVERY) * SAVE_EVERY
        more, reached = helpers.wait_for_step(procs[1], frozen_at)
        out1 += more
        assert reached == frozen_at, out1
        procs[1].send_signal(signal.SIGSTOP)
        out0, reached = helpers.wait_for_step(procs[0], frozen_at)  # (the chief at the save: it waits in the gather)
        assert reached == frozen_at, out0
        time.sleep(FROZEN_S)
        procs[1].kill()
        codes, outputs = _outputs(procs, {0: out0, 1: out1})
        assert codes == [errors.PEER_LOST, -signal.SIGKILL], outputs[0]
        assert _resumed_at(outputs) == resumes[-1]
        _assert_restored_shards(outputs, 6)
        numbers = _assert_every_commit_has_every_shard(run_dir, 6)
        events.append(f"resumed at global step {resumes[-1]}, worker 1 frozen after step {frozen_at} and killed: "
                      f"commits {numbers} after")

        # 4: to the end
        codes, outputs = _outputs(start(4, "--quiet"))
        assert codes == [0, 0], outputs
        resumes.append(_resumed_at(outputs))
        _assert_restored_shards(outputs, 6)
        events.append(f"resumed at global step {resumes[-1]}, to the end")
        helpers.assert_bitwise_equal(helpers.latest_variables(reference_dir), helpers.latest_variables(run_dir))
        _assert_every_commit_has_every_shard(run_dir, 6)
        ledger = {}
        for stage, (begin, end) in enumerate(zip(resumes, [*resumes[1:], total]), 1):
            trained = ledger_job.read(tmp_path / f"ledger-{stage}.txt")
            assert min(trained) == begin, (stage, begin, sorted(trained))
            if stage in (1, 4):  # a stop loses no step; a kill, those after the last commit
                assert max(trained) == end - 1, (stage, end, sorted(trained))
            ledger.update({step: shares for step, shares in trained.items() if step < end})
        assert ledger == reference_ledger
    finally:
        request.node.add_report_section("call", "random stops", _stops_report(seed, events))


# -- what each worker reads ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def decoding(tmp_path_factory, files):
    """The small files trained by 2 workers (12 shards, the default), by 3 workers in 3 shards
    (--data-shards 3: shard k reads files k, k + 3, k + 6, k + 9), and by 2 workers with the
    pipeline's length left unknown, the runs at once, each process counting the records it
    decodes: {name: (run dir, ledger, outputs)}."""
    tmp, data = tmp_path_factory.mktemp("sharded-decoding"), files["small"]
    runs = {"2": (2, ()), "3": (3, ("--data-shards", "3")), "unknown": (2, ("--unknown-length",))}
    clusters = {name: helpers.start_workers(_train(tmp / f"run-{name}", data, tmp / f"ledger-{name}.txt",
                                                   "--count-decodes", "--quiet", *extra), workers)
                for name, (workers, extra) in runs.items()}
    done = {}
    for name, procs in clusters.items():
        codes, outputs = _outputs(procs)
        assert codes == [0] * len(procs), outputs
        done[name] = (tmp / f"run-{name}", tmp / f"ledger-{name}.txt", outputs)
    return done


@pytest.mark.parametrize("workers,shards", [(2, 12), (3, 3)])
def test_each_worker_decodes_and_trains_only_its_own_files(files, decoding, workers, shards, request):
    """Each worker decodes its share of the files every epoch, not the whole stream, and trains
    only the records of its own shards' files, whole parts in shard order; every epoch trains
    every record once."""
    data = files["small"]
    _, ledger_file, outputs = decoding[str(workers)]
    per = shards // workers
    for worker, out in enumerate(outputs):
        assert f"in {shards} logical shards of its 12 files; this worker reads shards {worker * per}-{(worker + 1) * per - 1}" \
            in out, out
    ledger = ledger_job.read(ledger_file)
    _assert_every_epoch_exactly_once(ledger, data)
    _assert_workers_read_their_shards(ledger, ledger, data, shards, workers)
    decoded = [int(Path(f"{ledger_file}.decoded-{worker}").read_text()) for worker in range(workers)]
    request.node.add_report_section("call", "decoded", f"records decoded by each worker: {decoded}")
    assert all(abs(count - EPOCHS * data.total // workers) <= data.batch for count in decoded), decoded


def test_data_of_unknown_length_is_read_whole_in_its_first_epoch_then_in_shards(tmp_path, files, decoding,
                                                                                 request):
    """A TFRecord pipeline without assert_cardinality on two workers: the first epoch, whose end is
    where the data ends, is read whole by each worker; from the second each reads its 6 shards of
    12 (decoding the whole data once, then half of it an epoch), and every epoch trains every
    record once. Stopped by SIGTERM to one worker at a random step (in the first epoch, at its
    end, or later) and resumed, it ends bitwise equal to the uninterrupted run."""
    data = files["small"]
    reference_dir, ledger_file, outputs = decoding["unknown"]
    for worker, out in enumerate(outputs):
        assert "is read whole by every worker in its first epoch" in out, out
        assert f"in 12 logical shards of its 12 files; this worker reads shards {6 * worker}-{6 * worker + 5}" \
            in out, out
    ledger = ledger_job.read(ledger_file)
    _assert_every_epoch_exactly_once(ledger, data)
    _assert_workers_read_their_shards(ledger, [s for s in ledger if s >= data.steps_per_epoch], data, 12, 2)
    decoded = [int(Path(f"{ledger_file}.decoded-{worker}").read_text()) for worker in range(2)]
    expected = data.total + (EPOCHS - 1) * data.total // 2
    assert all(abs(count - expected) <= data.batch for count in decoded), (decoded, expected)

    seed = _seed()
    rng = random.Random(seed)
    target, who = rng.randint(1, EPOCHS * data.steps_per_epoch - 2), rng.randrange(2)
    request.node.add_report_section("call", "random stop", f"random.Random({seed}): SIGTERM to worker {who} at "
                                                           f"global step {target}")
    args = _train(tmp_path / "run", data, tmp_path / "ledger.txt", "--unknown-length", "--log-every-steps", "1")
    procs = helpers.start_workers(args, 2)
    out, reached = helpers.wait_for_step(procs[0], target)
    assert reached is not None, out
    procs[who].send_signal(signal.SIGTERM)
    codes, outputs = _outputs(procs, {0: out})
    if codes != [0, 0]:  # (else the run ended before the signal landed)
        assert codes == [128 + signal.SIGTERM] * 2, outputs
        stopped_at = int(re.search(r"stopped at epoch \d+ step \d+/\S+ \(global step (\d+)\)", outputs[0]).group(1))
        codes, outputs = _outputs(helpers.start_workers(args, 2))
        assert codes == [0, 0], outputs
        assert _resumed_at(outputs) == stopped_at
        if stopped_at > data.steps_per_epoch:
            _assert_restored_shards(outputs, 12)
        else:  # (the first epoch's global stream, or its end: the shards open where the second begins)
            assert all("in 12 logical shards of its 12 files" in out and "skipping" not in out for out in outputs)
    helpers.assert_bitwise_equal(helpers.latest_variables(reference_dir), helpers.latest_variables(tmp_path / "run"))


def test_worker_count_changes_train_every_record_once_an_epoch(tmp_path, files, request):
    """One process reading 12 shards (--data-shards 12) -> SIGTERM -> 2 workers -> SIGTERM -> 3
    workers -> SIGTERM -> one process to the end, each stop at a random step (one process stops at
    the next step, several at their next agreement: mid-epoch in most draws). Each resume restores
    its workers' blocks of the shards (nothing skipped); equal files in 12 shards make an epoch one
    pass of every shard, so every epoch trains every record exactly once, no global step twice or
    missing, and at every step each worker trained its own shards' parts."""
    data = files["even"]
    total = EPOCHS * data.steps_per_epoch
    args = _train(tmp_path / "run", data, tmp_path / "ledger.txt")
    seed, spans = _seed(), []  # spans: (workers, first global step, end)
    rng = random.Random(seed)
    try:
        for workers in (1, 2, 3):
            begin = spans[-1][2] if spans else 0
            procs = _start([*args, "--log-every-steps", "1", *([] if spans else ["--data-shards", "12"])], workers)
            out, reached = helpers.wait_for_step(procs[0], begin + rng.randint(2, 14))
            assert reached is not None, out
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            codes, outputs = _outputs(procs, {0: out})
            assert codes == [128 + signal.SIGTERM] * workers, outputs
            stops = {helpers.stop_of(out)[3] for out in outputs}
            assert len(stops) == 1 and reached <= min(stops) < total, outputs
            if spans:
                assert _resumed_at(outputs) == begin
                _assert_restored_shards(outputs, 12)
            else:
                assert "in 12 logical shards of its 12 files; this worker reads shards 0-11" in outputs[0], outputs[0]
            spans.append((workers, begin, stops.pop()))
        final = helpers.run([*args, "--quiet"])
        assert final.returncode == 0, final.stderr
        assert _resumed_at([final.stderr]) == spans[-1][2]
        _assert_restored_shards([final.stderr], 12)
        spans.append((1, spans[-1][2], total))
        ledger = ledger_job.read(tmp_path / "ledger.txt")
        _assert_every_epoch_exactly_once(ledger, data)
        for workers, begin, end in spans:
            _assert_workers_read_their_shards(ledger, range(begin, end), data, 12, workers)
    finally:
        request.node.add_report_section("call", "random stops", f"random.Random({seed}) drew the moments; "
                                        f"(workers, first global step, end): {spans}")


# -- refusals ------------------------------------------------------------------------------------------
def test_shard_counts_that_the_workers_cannot_share_are_refused(tmp_path, files, decoding):
    """The 3-shard run of 3 workers cannot be resumed (for a 4th epoch) by 2 workers: exit 3,
    naming the counts that can; a new run of 2 workers cannot be asked for 3 shards: exit 2;
    and a logical shard whose files are all empty ends its run with exit 4 naming it (the
    check runs inside the compiled step). (The three at once.)"""
    data = files["small"]
    shutil.copytree(decoding["3"][0], tmp_path / "run")
    resumed = helpers.start_workers(_train(tmp_path / "run", data, tmp_path / "ledger.txt", "--epochs", "4",
                                           "--quiet"), 2)
    new = helpers.start_workers(_train(tmp_path / "new", data, tmp_path / "new.txt", "--data-shards", "3", "--quiet"), 2)
    holes = Files(tmp_path / "holes", (24, 0, 24, 0), 24)  # (shard 1 of 2 reads files 1 and 3)
    ledger_job.write_files(holes.folder, list(holes.sizes))
    empty = helpers.start(_train(tmp_path / "empty", holes, tmp_path / "empty.txt", "--data-shards", "2", "--quiet"))
    codes, outputs = _outputs(resumed)
    assert codes == [errors.CHECKPOINT_ERROR] * 2, outputs
    assert all("read in 3 logical shards (fixed when the run started), which 2 workers cannot share evenly; "
               "resume it with 1 or 3 workers" in out for out in outputs), outputs
    codes, outputs = _outputs(new)
    assert codes == [errors.BAD_INPUT] * 2, outputs
    assert all("--data-shards 3 cannot be split evenly among 2 workers; with 3 logical shards the job can run on "
               "1 or 3 workers" in out for out in outputs), outputs
    assert not (tmp_path / "ledger.txt").exists() and not (tmp_path / "new.txt").exists()  # nothing trained
    [code], [out] = _outputs([empty])
    assert code == errors.DATA_ERROR, out
    assert "logical shard 1 of the streamed pipeline has no records (its files are empty); use fewer --data-shards, " \
        "or remove the empty files" in out and "Traceback" not in out, out


def test_the_chief_never_combines_a_partial_state(tmp_path):
    """The chief writes the shards' states only when the gather brought every shard's."""
    import tensorflow as tf

    from trainer.data import sharded
    from trainer.data.pipeline_graph import checkpointable
    from trainer.data.shard_plan import Layout
    ledger_job.write_files(tmp_path, [8] * 4)
    paths = sorted(str(p) for p in tmp_path.glob("*.tfrecord"))
    dataset = tf.data.Dataset.from_tensor_slices(paths).interleave(tf.data.TFRecordDataset).batch(4)
    stream, verdict = checkpointable(dataset.apply(tf.data.experimental.assert_cardinality(8)))
    readers = [sharded.ShardedReader(stream, Layout(4, 4, 2, worker), verdict, "records", None, 0)
               for worker in (0, 1)]
    for reader in readers:
        reader.open()
        next(reader)
    mine = [reader.mine() for reader in readers]
    record = sharded.unpack(sharded.combine(mine, readers[0].layout))
    assert [(p.passes, p.taken) for p in record["positions"]] == [(1, 1)] * 4 and all(record["states"])
    for partial in ([mine[0]], [mine[1]], [mine[0], mine[0]]):
        with pytest.raises(RuntimeError, match="expected 0..3"):
            sharded.combine(partial, readers[0].layout)
