"""Watching for preemption notices off the training thread.

``--notices auto`` (the default) names the cloud from local facts only: the
DMI/SMBIOS strings under ``/sys/class/dmi/id`` (as cloud-init's platform
detection reads them); a metadata service is contacted only when they name its
cloud, so a machine that is not on a cloud opens no connection. ``off`` watches
no cloud; a list (``aws,gce``) watches those, whatever the DMI says.

The watcher's threads only record notices, as signal handlers only record a
signal: the training loop takes them at a step boundary and decides there. A
source that hangs, resets or answers garbage is logged once and retried quietly.
"""
from __future__ import annotations

import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .metadata import MetadataError, Notice, sources_for

log = logging.getLogger("trainer")

DMI_DIR = "/sys/class/dmi/id"
AZURE_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"  # every Azure VM's chassis asset tag (cloud-init)
RETRY_S = 10.0


def parse_choice(value: str) -> list[str] | None:
    """``--notices``'s value (TrainConfig has checked it) as the platforms to watch; None for auto."""
    value = value.strip().lower()
    if value == "auto":
        return None
    return [] if value == "off" else [n.strip() for n in value.split(",") if n.strip()]


def detect_platform(dmi_dir: str = DMI_DIR) -> str | None:
    """The cloud this machine runs on, from its DMI strings alone; None when they name none."""
    def read(name: str) -> str:
        try:
            return (Path(dmi_dir) / name).read_text(errors="replace").strip()
        except OSError:
            return ""
    vendors = {read("sys_vendor"), read("board_vendor")}
    if "Amazon EC2" in vendors or "amazon" in read("bios_version").lower():
        return "aws"
    if read("product_name") == "Google Compute Engine" or read("bios_vendor") == "Google":
        return "gce"
    if read("chassis_asset_tag") == AZURE_ASSET_TAG:
        return "azure"
    return None


def platforms_to_watch(choice: str, env=os.environ) -> list[str]:
    chosen = parse_choice(choice)
    if chosen is not None:
        return chosen
    found = detect_platform(env.get("TRAINER_DMI_DIR") or DMI_DIR)
    return [found] if found else []


class Watcher:
    """One daemon thread per source; each notice is recorded once, for :meth:`take`."""

    def __init__(self, sources: list, retry_s: float = RETRY_S):
        self.sources = sources
        self.retry_s = retry_s
        self._lock = threading.Lock()
        self._new: list[Notice] = []
        self._recorded: set[tuple] = set()
        self._closed = threading.Event()

    @classmethod
    def for_choice(cls, choice: str, env=os.environ) -> Watcher:
        platforms = platforms_to_watch(choice, env)
        if platforms:
            log.info("watching for preemption notices: %s", ", ".join(platforms))
        return cls(sources_for(platforms, env))

    def start(self) -> Watcher:
        for source in self.sources:
            threading.Thread(target=self._watch, args=(source,), name=f"notices-{source.name}", daemon=True).start()
        return self

    def record(self, notice: Notice) -> None:
        key = (notice.source, notice.deadline, notice.detail)
        with self._lock:
            if key not in self._recorded:
                self._recorded.add(key)
                self._new.append(notice)

    def take(self) -> list[Notice]:
        """The notices recorded since the last call."""
        with self._lock:
            new, self._new = self._new, []
        return new

    def acknowledge(self) -> None:
        """The run has stopped: tell the platforms that wait for it (Azure) to go ahead."""
        for source in self.sources:
            ack = getattr(source, "acknowledge", None)
            if ack:
                try:
                    ack()
                except (MetadataError, OSError) as exc:
                    log.warning("could not acknowledge the %s notice: %s", source.name, exc)

    def close(self) -> None:
        self._closed.set()

    def _watch(self, source) -> None:
        warned = False
        while not self._closed.is_set():
            try:
                for notice in source.poll():
                    self.record(notice)
                wait = source.interval
            except (MetadataError, OSError, ValueError, KeyError, TypeError) as exc:
                if not warned:
                    log.warning("preemption notices: the %s metadata service did not answer as expected (%s); "
                                "training goes on, and it is asked again every %g s", source.name,
                                str(exc)[:200] or type(exc).__name__, self.retry_s)
                    warned = True
                wait = self.retry_s
            self._closed.wait(wait)


def slurm_deadline(signum: int, now: float, end_time: float | None, warning_signal: int,
                   window_s: float) -> float | None:
    """The job's end time when ``signum`` is SLURM's time-limit warning (``--signal``): the
    warning signal, with the end time near (within ``window_s``). A signal far from the end is
    a preemption: no deadline."""
    if signum != warning_signal or end_time is None or end_time - now > window_s:
        return None
    return end_time


class EndTime:
    """A SLURM job's end time, looked up off the training thread (``lookup`` calls squeue), again
    every ``retry_s`` while it fails, for ``wait_s``: a busy slurmctld may not answer at once,
    and the warning signal, sent to every process of a job step, also ends an squeue asking."""

    def __init__(self, lookup: Callable[[], float | None] | None, wait_s: float = 10.0, retry_s: float = 1.0):
        self.value: float | None = None
        self._done = threading.Event()
        self._give_up_at = time.monotonic() + wait_s
        if lookup is None:
            self._done.set()
            return

        def fetch():
            while True:
                try:
                    self.value = lookup()
                    break
                except (OSError, ValueError, subprocess.SubprocessError) as exc:
                    if time.monotonic() + retry_s >= self._give_up_at:
                        log.warning("could not read the SLURM job's end time (%s): a warning signal stops at once",
                                    exc)
                        break
                    time.sleep(retry_s)
            self._done.set()
        threading.Thread(target=fetch, name="slurm-end-time", daemon=True).start()

    @property
    def known(self) -> bool:
        """The lookup has ended (with a time or without one); never waits."""
        return self._done.is_set()

    @property
    def overdue(self) -> bool:
        """The lookup has taken longer than a lookup should (a warning then stops at once)."""
        return not self._done.is_set() and time.monotonic() > self._give_up_at

