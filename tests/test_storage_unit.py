"""The storage seam's retry and error classification, with a fake filesystem."""
import errno

import pytest

from trainer.storage import RetryPolicy, Storage, StorageError, is_transient


class HttpError(Exception):
    def __init__(self, code):
        super().__init__(f"HTTP {code}")
        self.code = code


@pytest.mark.parametrize("exc,transient", [
    (TimeoutError(), True), (ConnectionResetError(), True), (OSError(errno.ECONNRESET, "reset"), True),
    (HttpError(503), True), (HttpError(429), True), (HttpError(408), True),
    (HttpError(404), False), (HttpError(403), False), (FileNotFoundError(), False),
    (PermissionError(), False), (ValueError("bad"), False)])
def test_is_transient(exc, transient):
    assert is_transient(exc) is transient


class FlakyFS:
    """Fails the first ``failures`` calls with ``error``, then works like a dict."""

    def __init__(self, failures, error):
        self.failures, self.error, self.files, self.calls = failures, error, {}, 0

    def pipe_file(self, path, data):
        self.calls += 1
        if self.calls <= self.failures:
            raise self.error
        self.files[path] = data

    def cat_file(self, path):
        return self.files[path]


def flaky_storage(failures, error):
    sleeps = []
    storage = Storage("s3://bucket/run", retry=RetryPolicy(attempts=4, base_delay_s=0.5, max_delay_s=1.0),
                      sleep=sleeps.append)
    storage._fs, storage._fs_root = FlakyFS(failures, error), "bucket/run"
    return storage, sleeps


def test_transient_errors_are_retried_with_bounded_backoff():
    storage, sleeps = flaky_storage(3, HttpError(503))
    storage.write_text("a", "x")
    assert storage.read_text("a") == "x"
    assert sleeps == [0.5, 1.0, 1.0]


def test_retries_are_bounded():
    storage, sleeps = flaky_storage(10, TimeoutError("slow"))
    with pytest.raises(StorageError, match="s3://bucket/run/a.*endpoint unreachable"):
        storage.write_text("a", "x")
    assert len(sleeps) == 3


def test_permanent_errors_are_not_retried_and_carry_a_hint():
    storage, sleeps = flaky_storage(1, PermissionError("AccessDenied"))
    with pytest.raises(StorageError, match="read-only"):
        storage.probe()
    assert sleeps == []


def test_local_storage_round_trip_leaves_no_temp_files(tmp_path):
    storage = Storage(str(tmp_path / "run"))
    storage.write_text("sub/f.txt", "hello")
    assert storage.read_text("sub/f.txt") == "hello" and storage.listdir("sub") == ["f.txt"]
    storage.delete("sub/f.txt")
    storage.delete("sub/f.txt")  # missing is fine
    assert storage.listdir("sub") == [] and storage.listdir("nope") == []
    storage.probe()
    assert storage.listdir("") == ["sub"]
