"""Preemption notices, piece by piece: each platform's source against a stub that speaks its
protocol (on 127.0.0.1), platform detection from DMI strings, the watcher's handling of broken
services, and the deadline rule with a driven clock."""
import logging
import signal
import socket
import threading
import time
import urllib.request

import pytest

from tests.metadata_stubs import AwsImds, AzureEvents, GceMetadata
from trainer.config import ConfigError, TrainConfig
from trainer.steering.metadata import AwsSpot, GceWatch, parse_time
from trainer.steering.metadata import AzureEvents as AzureSource
from trainer.steering.notices import Watcher, detect_platform, platforms_to_watch
from trainer.steering.signals import StopRequest
from trainer.training.deadline import Deadlines, should_stop_now


@pytest.fixture
def stubs():
    made = []

    def make(cls):
        made.append(cls())
        return made[-1]
    yield make
    for stub in made:
        stub.close()


def dmi(folder, **strings):
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in strings.items():
        (folder / name).write_text(value + "\n")
    return str(folder)


def test_dmi_names_the_cloud_and_auto_watches_only_that_one(tmp_path, monkeypatch):
    assert detect_platform(dmi(tmp_path / "aws", sys_vendor="Amazon EC2", product_name="m5.large")) == "aws"
    assert detect_platform(dmi(tmp_path / "gce", product_name="Google Compute Engine")) == "gce"
    assert detect_platform(dmi(tmp_path / "azure", sys_vendor="Microsoft Corporation",
                               chassis_asset_tag="7783-7084-3265-9085-8269-3286-77")) == "azure"
    laptop = dmi(tmp_path / "laptop", sys_vendor="LENOVO", product_name="20XW", chassis_asset_tag="No Asset Tag")
    assert detect_platform(laptop) is None
    assert detect_platform(str(tmp_path / "no-dmi-at-all")) is None
    assert platforms_to_watch("auto", {"TRAINER_DMI_DIR": str(tmp_path / "gce")}) == ["gce"]
    assert platforms_to_watch("off", {"TRAINER_DMI_DIR": str(tmp_path / "gce")}) == []
    assert platforms_to_watch("aws,azure", {"TRAINER_DMI_DIR": laptop}) == ["aws", "azure"]
    # auto on a machine that is no cloud: no source, no thread, not one connection
    connects = []
    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", lambda self, addr: connects.append(addr) or real_connect(self, addr))
    threads = threading.active_count()
    watcher = Watcher.for_choice("auto", {"TRAINER_DMI_DIR": laptop}).start()
    assert watcher.sources == [] and threading.active_count() == threads and watcher.take() == []
    watcher.close()
    assert connects == []


def test_notices_option_is_checked():
    assert TrainConfig("r", notices="aws, gce").notices == "aws, gce"
    with pytest.raises(ConfigError, match=r"--notices: expected auto, off or a comma-separated list of aws, gce, "
                                          r"azure, got 'ec2'"):
        TrainConfig("r", notices="ec2")
    with pytest.raises(ConfigError, match="--notice-margin-seconds"):
        TrainConfig("r", notice_margin_seconds=-1)


def test_aws_imdsv2_token_then_404_until_the_notice(stubs):
    imds = stubs(AwsImds)
    url = f"http://{imds.address}/latest/meta-data/spot/instance-action"
    with pytest.raises(urllib.error.HTTPError, match="401"):
        urllib.request.urlopen(url, timeout=5)  # the stub, like IMDSv2, wants a token
    source = AwsSpot({"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{imds.address}"})
    assert source.poll() == []
    imds.recommend_rebalance()
    imds.announce_interruption(1_900_000_000.0)
    notices = source.poll()
    assert [(n.source, n.deadline, n.advisory, n.detail) for n in notices] == [
        ("aws", 1_900_000_000.0, False, "terminate"), ("aws-rebalance", None, True, notices[1].detail)]
    puts = [r for r in imds.requests if r[0] == "PUT"]
    assert len(puts) == 1 and puts[0][2]["x-aws-ec2-metadata-token-ttl-seconds"] == "21600"  # one token, reused
    imds.tokens.clear()  # the service forgot it (a restart): one fresh token, no error
    assert len(source.poll()) == 2 and len([r for r in imds.requests if r[0] == "PUT"]) == 2


def test_gce_hanging_get_returns_when_the_value_changes(stubs):
    gce = stubs(GceMetadata)
    source = GceWatch("preempted", {"GCE_METADATA_HOST": gce.address}, clock=lambda: 1000.0)
    assert source.poll() == []  # the first read: the value and its ETag, at once
    got = []
    waiting = threading.Thread(target=lambda: got.extend(source.poll()))
    waiting.start()
    deadline = time.monotonic() + 30
    while not any("wait_for_change=true" in r[1] for r in gce.requests):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert waiting.is_alive()  # hangs: no change yet
    gce.set("preempted", "TRUE")
    waiting.join(30)
    assert not waiting.is_alive()
    assert [(n.source, n.deadline) for n in got] == [("gce", 1030.0)]  # 30 s after the notice
    hanging = [r for r in gce.requests if "wait_for_change=true" in r[1]]
    assert all(r[2]["metadata-flavor"] == "Google" for r in gce.requests) and "last_etag=" in hanging[0][1]
    maintenance = GceWatch("maintenance-event", {"GCE_METADATA_HOST": gce.address})
    assert maintenance.poll() == []
    gce.announce_maintenance(1_900_000_000.0)
    assert [(n.source, n.deadline, n.detail) for n in maintenance.poll()] == [
        ("gce-maintenance", 1_900_000_000.0, "TERMINATE_ON_HOST_MAINTENANCE")]


def test_azure_scheduled_events_for_this_vm_once_then_acknowledged(stubs):
    azure = stubs(AzureEvents)
    source = AzureSource({"TRAINER_AZURE_METADATA_ENDPOINT": f"http://{azure.address}"})
    assert source.poll() == []
    azure.announce_preemption(1_900_000_000.0, resources=["another-vm"])  # not this VM's
    assert source.poll() == []
    event = azure.announce_preemption(1_900_000_030.0)
    assert [(n.source, n.deadline, n.detail) for n in source.poll()] == [("azure", 1_900_000_030.0, "Preempt")]
    assert source.poll() == []  # same DocumentIncarnation: nothing new
    source.acknowledge()
    assert azure.acknowledged == [event]
    assert all(r[2]["metadata"] == "true" and "api-version=" in r[1] for r in azure.requests)
    assert parse_time("Mon, 19 Sep 2016 18:29:47 GMT") == parse_time("2016-09-19T18:29:47Z")


@pytest.mark.parametrize("fault", ["hang", "reset", "garbage"])
def test_a_broken_metadata_service_warns_once_and_is_retried(stubs, caplog, fault):
    imds = stubs(AwsImds)
    imds.fault = fault
    watcher = Watcher([AwsSpot({"AWS_EC2_METADATA_SERVICE_ENDPOINT": f"http://{imds.address}"})], retry_s=0.05)
    with caplog.at_level(logging.WARNING, logger="trainer"):
        watcher.start()
        deadline = time.monotonic() + 60
        while len(imds.requests) < 3:  # asked again after the first failure
            assert time.monotonic() < deadline, imds.requests
            time.sleep(0.05)
        imds.fault = None
        imds.announce_interruption(1_900_000_000.0)
        while not watcher.take():  # and, once it answers, heard
            assert time.monotonic() < deadline
            time.sleep(0.05)
        watcher.close()
    warnings = [r.getMessage() for r in caplog.records if "metadata service" in r.getMessage()]
    assert len(warnings) == 1 and "training goes on" in warnings[0], warnings


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


class FakeWatcher:
    def __init__(self):
        self.new = []

    def take(self):
        new, self.new = self.new, []
        return new


def test_deadline_rule_saves_at_once_trains_on_and_stops_in_time():
    from trainer.steering.metadata import Notice
    assert should_stop_now(10.0, 1.0, 2.0, 5.0) is False and should_stop_now(7.9, 1.0, 2.0, 5.0) is True
    clock, watcher = Clock(), FakeWatcher()
    d = Deadlines(StopRequest(signals=()), watcher, margin=5.0, clock=clock)
    d.measure_steps(1.0, 1)
    d.measure_save(2.0)
    where = {"position": 0.5, "global_step": 10}
    watcher.new = [Notice("aws-rebalance", None, advisory=True)]
    assert (d.local(where, 1).save, d.local(where, 1).save) == (True, False)  # advisory: saved once
    watcher.new = [Notice("aws", clock.now + 30)]
    first = d.local(where, 1)
    assert first.save and first.stop is None and first.sources == ("aws",)
    stops = []
    while not stops:
        clock.now += 1.0
        stops = [d.local(where, 1).stop]
        stops = [s for s in stops if s]
    left = 1030 - clock.now
    assert stops == [signal.SIGTERM] and 5.0 + 2.0 <= left + 1.0 and left < 1.0 + 2.0 + 5.0
    # a notice whose deadline leaves no room for a save: stop at once
    late = Deadlines(StopRequest(signals=()), FakeWatcher(), margin=5.0, clock=clock)
    late.watcher.new = [Notice("gce", clock.now + 3)]
    assert late.local(where, 1).stop == signal.SIGTERM
    assert "too close for a save" in late.seen[0][1]["action"]


def test_an_epoch_s_turn_not_yet_made_by_this_start_is_estimated_as_a_traced_validation_and_a_save():
    """A resumed run's notice may come before its first epoch turn: the turn still counts."""
    d = Deadlines(StopRequest(signals=()), None, margin=5.0)
    d.measure_execution(3.0, 1)  # (the first: it traced)
    d.measure_execution(0.5, 1)
    d.measure_save(1.0)
    assert d.epoch_turn(validation_steps=4) == 3.0 + 4 * 0.5 + 1.0
    d.measure_epoch_turn(2.5)
    assert d.epoch_turn(validation_steps=4) == 2.5  # once made: as measured


def test_slurm_warning_is_a_deadline_near_the_end_and_a_preemption_far_from_it():
    from trainer.steering.notices import EndTime
    clock = Clock()
    for end, expected in ((clock.now + 90, None), (clock.now + 3600, signal.SIGUSR1)):
        stop = StopRequest(signals=())
        stop.handle(signal.SIGUSR1)
        end_time = EndTime(lambda end=end: end)
        deadline = time.monotonic() + 30
        while not end_time.known:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        d = Deadlines(stop, None, end_time, margin=5.0, clock=clock)
        # (what a wait for the other workers asks, from any thread: it reads only)
        assert d.stops_at_once(signal.SIGUSR1) == (expected is not None) and d.seen == []
        assert d.local({"position": 0, "global_step": 0}, 1).stop == expected
        if expected is None:
            assert d.active[0].source == "slurm" and d.active[0].deadline == end
            assert d.signal_stop() is None and len(d.seen) == 1  # (taken once)
        assert d.stops_at_once(signal.SIGTERM)
    plain = StopRequest(signals=())
    plain.handle(signal.SIGTERM)
    assert Deadlines(plain, None, None).local({}, 1).stop == signal.SIGTERM  # no deadline: at once
    answer = threading.Event()
    looking_up = Deadlines(StopRequest(signals=()), None, EndTime(lambda: answer.wait(30) and None, wait_s=3600))
    assert not looking_up.stops_at_once(signal.SIGUSR1)  # (its end time not known yet: not for ever, see overdue)
    answer.set()


def test_the_slurm_end_time_is_looked_up_again_while_squeue_fails(caplog):
    """A squeue that fails (slurmctld busy, or the warning signal itself hitting the squeue that
    is asking) is asked again; one that keeps failing gives up once its wait is over."""
    import subprocess

    from trainer.steering.notices import EndTime

    def wait_known(end_time):
        deadline = time.monotonic() + 30
        while not end_time.known:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        return end_time
    answers = [subprocess.SubprocessError("squeue exited with -10: "), OSError("no squeue"), 1234.0]
    calls = []

    def flaky():
        calls.append(time.monotonic())
        answer = answers[len(calls) - 1]
        if isinstance(answer, Exception):
            raise answer
        return answer
    assert wait_known(EndTime(flaky, wait_s=30, retry_s=0.05)).value == 1234.0 and len(calls) == 3
    with caplog.at_level(logging.WARNING):
        failing = wait_known(EndTime(lambda: (_ for _ in ()).throw(OSError("no squeue")), wait_s=0.3,
                                     retry_s=0.05))
    assert failing.value is None and "could not read the SLURM job's end time (no squeue)" in caplog.text
