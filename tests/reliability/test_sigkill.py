"""SIGKILL at random moments while checkpoints are written (and uploaded), for a local
run dir and emulated S3 and GCS buckets. After every kill the next start restores the
newest committed checkpoint (never an older one: nothing seen committed is ever lost,
and every file of it passes its size and CRC check), and no leftover of an uncommitted
checkpoint or of a torn write survives that start."""
import json
import random
import threading
import time

import pytest

from tests import helpers
from trainer.checkpoint.index import DIR, committed, leftovers, number_of
from trainer.storage import Storage, open_storage

# kind: (fewest kills, fewest saves the run must reach). Every step saves, and a save is
# written, committed (and uploaded) in the background while the next steps run, so kills land
# inside writes, commits, uploads and pruning. A start is killed a random fraction of a second
# after the run dir shows a drawn number of new commits (0 kills it during its first steps):
# the saves reached count commits, not the machine's speed.
PLAN = {"local": (11, 50), "s3": (11, 50), "gcs": (8, 30)}
MOST_NEW_COMMITS = 8  # the most new commits a start is drawn to wait for before its kill
WAIT_S = 300  # for a start's drawn commits: only a run that stopped saving takes this long


@pytest.fixture(params=list(PLAN))
def run_root(request, tmp_path):
    if request.param == "local":
        return request.param, str(tmp_path / "run"), {}
    return (request.param, *request.getfixturevalue(f"{request.param}_run_root"))


class CommitWatcher(threading.Thread):
    """Lists the run's checkpoint folder every few ms and remembers every commit seen."""

    def __init__(self, storage: Storage, seen: set):
        super().__init__(daemon=True)
        self.storage, self.seen, self._done = storage, seen, threading.Event()
        self.interval_s = 0.005 if storage.local_path("") else 0.02
        self._listed = threading.Condition()
        self.error: Exception | None = None  # what stopped the watching, if anything did

    def run(self):
        try:
            while not self._done.is_set():
                found = committed(self.storage.listdir(DIR))
                with self._listed:
                    self.seen.update(found)
                    self._listed.notify_all()
                self._done.wait(self.interval_s)
        except Exception as exc:  # (reported by wait_for, not lost with the thread)
            self.error = exc
            raise

    def wait_for(self, number: int, proc) -> None:
        """Until a commit numbered ``number`` or newer was seen; fails if ``proc`` ends first."""
        deadline = time.monotonic() + WAIT_S
        with self._listed:
            while max(self.seen, default=0) < number:
                assert self.is_alive(), f"the commit watcher stopped: {self.error!r}"
                assert proc.poll() is None, f"the run ended before ckpt-{number}:\n{proc.stdout.read()}"
                assert time.monotonic() < deadline, f"no ckpt-{number} or newer within {WAIT_S} s"
                self._listed.wait(1)

    def stop(self) -> None:
        self._done.set()
        self.join()


def _stale(places) -> list[tuple[Storage, str]]:
    """Leftovers of killed saves, uploads and torn writes, as (storage, relative name).
    A partial upload of a checkpoint committed on this node does not count: the next
    start uploads that checkpoint again."""
    done_here = {n for p in places for n in committed(p.listdir(DIR))}
    found = []
    for storage in places:
        found += [(storage, f"{DIR}/{n}") for n in leftovers(storage.listdir(DIR)) if number_of(n) not in done_here]
        found += [(storage, n) for n in storage.listdir("") if ".tmp-" in n]
    return found


def test_sigkill_during_saves_never_loses_a_commit(run_root, tmp_path, fault_report):
    kind, url, options = run_root
    kills, min_saves = PLAN[kind]
    store = open_storage(url, options)
    args = ["train", "--run-dir", url, *helpers.TINY, "--epochs", "200", "--save-every-steps", "1"]
    if options:
        args += ["--storage-options", json.dumps(options)]
    rng, seen, saves = random.Random(17), set(), 0
    for trial in range(3 * kills):  # more kills only while the drawn commits add up to fewer than min_saves
        last = trial >= kills and saves >= min_saves  # this start only checks the restore and clean-up
        places = [store]
        if options:  # every other start runs on a new node, whose staging folder is empty
            staging = tmp_path / f"node-{trial // 2}"
            places.append(open_storage(str(staging)))
            trial_args = args + ["--staging-dir", str(staging)]
        else:
            trial_args = args
        expected = max((n for p in places for n in committed(p.listdir(DIR))), default=None)
        stale = _stale(places)
        watcher = CommitWatcher(store, seen)
        watcher.start()
        proc = helpers.start(trial_args)
        try:
            out = helpers.wait_for(proc, "Epoch ")
            if expected is not None:
                assert f"resumed from {store.url(DIR)}/ckpt-{expected} at" in out, out
            survived = [name for storage, name in stale if storage.exists(name)]
            assert not survived, f"start {trial}: leftovers survived the start: {survived}"
            if not last:
                watcher.wait_for((expected or 0) + rng.randint(0, MOST_NEW_COMMITS), proc)
                time.sleep(rng.uniform(0, 0.5) if kind == "local" else rng.uniform(0, 1.0))
        finally:
            proc.kill()
            proc.communicate(timeout=30)
            watcher.stop()
        newest = max(committed(store.listdir(DIR)), default=0)
        assert newest >= max(seen, default=0), f"kill {trial}: ckpt-{max(seen)} was committed, newest is {newest}"
        if newest:
            helpers.assert_checkpoint_complete(store, newest)
        saves = max([saves, *(n for p in places for n in committed(p.listdir(DIR)))])
        fault_report["SIGKILLs"] += 1
        fault_report["leftovers cleaned"] += len(stale)
        if last:
            break
    fault_report["saves"] = saves
    fault_report["commits seen"] = len(seen)
    fault_report["commits lost"] = 0
    assert saves >= min_saves, f"only {saves} saves in {trial + 1} kills: the suite did not exercise enough saves"
