"""A whole training against an S3 run dir through a proxy that injects storage faults (5xx
bursts, resets before and after the store applied a request, truncated answers, stalls, a
blackout), with SIGKILLs at drawn commit counts and a new node every other start. Nothing
seen committed in the bucket is ever lost, every start resumes from the newest commit it can
see, and the run ends bitwise equal to an uninterrupted one (in the bucket).
STORAGE_FAULTS_SEED=n repeats a run's faults (in the order requests arrive) and kills."""
import json
import os
import random
import time

import pytest

from tests import helpers
from tests.faulty_proxy import BLACKOUT_RESETS, KINDS, FaultyProxy, Schedule
from tests.reliability.test_sigkill import CommitWatcher, _stale
from trainer.checkpoint.index import DIR, MARKER, committed
from trainer.storage import open_storage

KILLS = 2  # starts killed at drawn commit counts; then one start trains to the end
MOST_NEW_COMMITS = 12  # the most new local commits a start is drawn to make before its kill (at least 1)
SAVE_EVERY = 4  # steps (the uninterrupted reference saves less often: saving must not change the weights)
# The trainer's client gives up on an answer after 2 s (and retries): the proxy's stalls last 1-4 s.
CLIENT = {"connect_timeout": 2, "read_timeout": 2}
WAIT_S = 300  # for a start's drawn commits: only a run that stopped saving takes this long


@pytest.fixture
def proxy(s3_server):
    """The proxy in front of the session's S3 server, its seed printed (shown with a failure)."""
    seed = int(os.environ.get("STORAGE_FAULTS_SEED", random.SystemRandom().randrange(2**32)))
    proxy = FaultyProxy(s3_server, Schedule(seed))
    print(f"STORAGE_FAULTS_SEED={seed}: a blackout of {proxy.schedule.blackout_s:.1f} s from request "
          f"{proxy.schedule.blackout_at}")
    yield proxy
    proxy.close()


def test_storage_faults_and_sigkills_lose_no_commit_and_end_bitwise(s3_run_root, proxy, reference_run, tmp_path,
                                                                    fault_report):
    url, options = s3_run_root
    store = open_storage(url, options)  # the test's own view: straight to the store
    through_proxy = {**options, "endpoint_url": proxy.url, "config_kwargs": CLIENT}
    args = ["train", "--run-dir", url, "--storage-options", json.dumps(through_proxy), *helpers.TINY,
            "--save-every-steps", str(SAVE_EVERY), "--quiet"]
    rng, seen, finished = random.Random(proxy.schedule.seed), set(), False
    fault_report["seed"] = proxy.schedule.seed
    try:
        for trial in range(KILLS + 1):
            staging = tmp_path / f"node-{(trial + 1) // 2}"  # every other start runs on a new node
            node = open_storage(str(staging))
            expected = max((n for p in (store, node) for n in committed(p.listdir(DIR))), default=None)
            assert (expected or 0) >= max(seen, default=0), f"start {trial}: a commit seen in the bucket was lost"
            stale = _stale([store, node])
            watcher = CommitWatcher(store, seen)
            watcher.start()
            began = time.monotonic()
            proc = helpers.start(args + ["--staging-dir", str(staging)])
            try:
                out = _start_up(proc)
                if expected is not None:
                    assert f"resumed from {store.url(DIR)}/ckpt-{expected} at" in out, out
                survived = [name for storage, name in stale if storage.exists(name)]
                assert not survived, f"start {trial}: leftovers survived the start: {survived}"
                killed = trial < KILLS and _commits_made(node, (expected or 0) + rng.randint(1, MOST_NEW_COMMITS),
                                                         proc)
                if killed:
                    time.sleep(rng.uniform(0, 0.5))
                    proc.kill()
                out += proc.communicate(timeout=600)[0]
            finally:
                proc.kill()
                watcher.stop()
            finished = proc.returncode == 0  # the last start, or one that finished the run before its kill
            assert finished or (killed and proc.returncode == -9), out
            proxy.wait_idle()  # what the killed process handed over whole has reached the store
            newest = max(committed(store.listdir(DIR)), default=0)
            assert newest >= max(seen, default=0), f"start {trial}: ckpt-{max(seen)} was committed, newest is {newest}"
            if newest:
                helpers.assert_checkpoint_complete(store, newest)
            fault_report["SIGKILLs"] += not finished
            print(f"start {trial} on node {(trial + 1) // 2}: from ckpt-{expected}, {'exit 0' if finished else 'killed'}"
                  f" after {time.monotonic() - began:.1f} s with ckpt-{newest} in the bucket; "
                  f"{proxy.schedule.requests} requests so far, {dict(proxy.counts)}; "
                  + " ".join(line for line in out.splitlines() if "start-up:" in line or "flushed" in line))
            fault_report["leftovers cleaned"] += len(stale)
            if finished:
                break
    finally:
        _report_faults(proxy, fault_report)
    assert finished
    fault_report["commits seen"] = len(seen)
    fault_report["commits lost"] = 0
    missed = [kind for kind in (*KINDS, BLACKOUT_RESETS) if not proxy.counts[kind]]
    assert not missed, f"the run ended before these faults were injected: {missed}"
    helpers.assert_bitwise_equal(helpers.latest_variables(reference_run), _final_weights(store, tmp_path / "final"))


def _start_up(proc) -> str:
    """The output up to the line that says where training starts (or the whole output, if the
    process ended before it)."""
    seen = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        seen.append(line)
        if not line or "resumed from " in line or "starting a new run" in line:
            return "".join(seen)
    raise AssertionError(f"no start of training within {WAIT_S} s:\n{''.join(seen)}")


def _commits_made(node, number: int, proc) -> bool:
    """Wait until the node's staging folder holds ckpt-``number`` or newer (True), or the
    process ended (False: it finished the run first, or failed)."""
    deadline = time.monotonic() + WAIT_S
    while max(committed(node.listdir(DIR)), default=0) < number:
        if proc.poll() is not None:
            return False
        assert time.monotonic() < deadline, f"no ckpt-{number} or newer within {WAIT_S} s"
        time.sleep(0.005)
    return True


def _report_faults(proxy, fault_report) -> None:
    for kind in KINDS:
        fault_report[kind] = proxy.counts[kind]
    fault_report["blackout s"] = round(proxy.schedule.blackout_s, 1)
    fault_report[BLACKOUT_RESETS] = proxy.counts[BLACKOUT_RESETS]
    fault_report["requests"] = proxy.schedule.requests


def _final_weights(store, folder) -> dict:
    """The variables of the bucket's newest checkpoint, downloaded."""
    newest = committed(store.listdir(DIR))[0]
    marker = f"ckpt-{newest}{MARKER}"
    for name in [*json.loads(store.read_text(f"{DIR}/{marker}"))["files"], marker]:
        store.download(f"{DIR}/{name}", str(folder / DIR / name))
    return helpers.latest_variables(folder)
