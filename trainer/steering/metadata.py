"""The cloud platforms' preemption notices, read from their instance metadata services.

Each source speaks one platform's documented protocol and turns what it reads
into :class:`Notice` values; it never acts on them (the training loop does, at a
step boundary). The HTTP call is one seam (:class:`Http`), and each endpoint can
be pointed elsewhere by the variable the platform's own libraries read
(``AWS_EC2_METADATA_SERVICE_ENDPOINT``, ``GCE_METADATA_HOST``) or, for Azure,
``TRAINER_AZURE_METADATA_ENDPOINT``: tests point them at stub servers on 127.0.0.1.

* AWS (IMDSv2): a session token from ``PUT /latest/api/token``, then
  ``spot/instance-action`` (404 until the two-minute notice) and
  ``events/recommendations/rebalance`` (advisory), polled every 5 s as AWS advises.
* GCE: hanging GETs (``wait_for_change``, ``last_etag``) on ``instance/preempted``
  (about 30 s before the power-off) and ``instance/maintenance-event`` (the time
  from ``instance/upcoming-maintenance`` when the server has it).
* Azure: Scheduled Events, ``Preempt`` and ``Terminate`` events for this VM with
  their ``NotBefore``; acknowledged (``StartRequests``) once the run has stopped.
"""
from __future__ import annotations

import email.utils
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Notice:
    """A platform's word that this machine goes away: ``deadline`` (a UNIX time) or None when
    the platform gives none; ``advisory`` when it only recommends leaving."""
    source: str            # "aws", "aws-rebalance", "gce", "gce-maintenance", "azure", "slurm", "signal"
    deadline: float | None
    advisory: bool = False
    detail: str = ""       # the platform's own words: "terminate", "TERMINATE_ON_HOST_MAINTENANCE", ...
    signum: int = 15       # the exit code's signal (128 + N), as if the platform had sent it

    @property
    def label(self) -> str:
        return LABELS.get(self.source, self.source)


LABELS = {"aws": "AWS spot notice", "aws-rebalance": "AWS rebalance recommendation",
          "gce": "GCE preemption notice", "gce-maintenance": "GCE host maintenance notice",
          "azure": "Azure Scheduled Events notice", "slurm": "SLURM time limit warning"}


class MetadataError(Exception):
    """A metadata service answered in a way its protocol does not allow (or not at all)."""


class Http:
    """The network seam: one request, no proxy (metadata addresses are link-local), a timeout."""

    def __init__(self):
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def request(self, method: str, url: str, headers: dict, timeout: float,
                body: bytes | None = None) -> tuple[int, dict, bytes]:
        req = urllib.request.Request(url, data=body, headers=headers, method=method)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return resp.status, dict(resp.headers), resp.read(65536)
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers or {}), b""


def _endpoint(env, name: str, default: str) -> str:
    value = (env.get(name) or default).rstrip("/")
    return value if "://" in value else f"http://{value}"


class AwsSpot:
    """IMDSv2: the spot interruption notice and the rebalance recommendation."""
    name = "aws"
    interval = 5.0
    TOKEN_TTL_S = 21600

    def __init__(self, env=os.environ, http: Http | None = None, clock=time.time):
        self.root = _endpoint(env, "AWS_EC2_METADATA_SERVICE_ENDPOINT", "http://169.254.169.254")
        self.http, self.clock = http or Http(), clock
        self._token, self._token_until = "", 0.0

    def poll(self) -> list[Notice]:
        notices = []
        action = self._get("/latest/meta-data/spot/instance-action")
        if action is not None:
            notices.append(Notice("aws", parse_time(action["time"]), detail=action.get("action", "")))
        rebalance = self._get("/latest/meta-data/events/recommendations/rebalance")
        if rebalance is not None:
            notices.append(Notice("aws-rebalance", None, advisory=True,
                                  detail=f"noticed at {rebalance.get('noticeTime', '?')}"))
        return notices

    def _get(self, path: str) -> dict | None:
        """The JSON document at ``path``, or None while it is absent (404)."""
        for _ in range(2):  # a token the service no longer accepts (401): one fresh one
            status, _, body = self.http.request("GET", self.root + path,
                                                {"X-aws-ec2-metadata-token": self._session_token()}, 2.0)
            if status == 401:
                self._token_until = 0.0
                continue
            if status == 404:
                return None
            if status != 200:
                raise MetadataError(f"GET {path}: HTTP {status}")
            return _json(body, path)
        raise MetadataError(f"GET {path}: HTTP 401 with a fresh token")

    def _session_token(self) -> str:
        if self.clock() < self._token_until:
            return self._token
        status, _, body = self.http.request("PUT", self.root + "/latest/api/token",
                                            {"X-aws-ec2-metadata-token-ttl-seconds": str(self.TOKEN_TTL_S)}, 2.0)
        if status != 200 or not body:
            raise MetadataError(f"PUT /latest/api/token: HTTP {status}")
        self._token, self._token_until = body.decode().strip(), self.clock() + self.TOKEN_TTL_S - 60
        return self._token


class GceWatch:
    """One hanging GET on a GCE metadata value: returns as soon as it changes (or after
    ``WAIT_S``), so the notice arrives without polling."""
    interval = 0.0   # the GET itself waits
    WAIT_S = 60
    PREEMPTION_NOTICE_S = 30.0

    def __init__(self, key: str, env=os.environ, http: Http | None = None, clock=time.time):
        self.key, self.name = key, "gce" if key == "preempted" else "gce-maintenance"
        self.root = _endpoint(env, "GCE_METADATA_HOST", "metadata.google.internal") + "/computeMetadata/v1/instance/"
        self.http, self.clock = http or Http(), clock
        self._etag = ""

    def poll(self) -> list[Notice]:
        value = self._read(self.key, wait=bool(self._etag))
        if self.key == "preempted" and value == "TRUE":
            return [Notice("gce", self.clock() + self.PREEMPTION_NOTICE_S, detail="preempted")]
        if self.key == "maintenance-event" and value.startswith("TERMINATE"):
            return [Notice("gce-maintenance", self._maintenance_start(), detail=value)]
        return []

    def _read(self, key: str, wait: bool) -> str:
        query = f"?wait_for_change=true&last_etag={self._etag}&timeout_sec={self.WAIT_S}" if wait else ""
        status, headers, body = self.http.request("GET", self.root + key + query, {"Metadata-Flavor": "Google"},
                                                  self.WAIT_S + 10 if wait else 2.0)
        if status != 200 or _header(headers, "Metadata-Flavor") != "Google":
            raise MetadataError(f"GET instance/{key}: HTTP {status}, not the GCE metadata server")
        if key == self.key:
            self._etag = _header(headers, "ETag") or self._etag
        return body.decode(errors="replace").strip()

    def _maintenance_start(self) -> float | None:
        """``window_start_time`` of ``instance/upcoming-maintenance``; None (no time given) when
        the server does not have it."""
        try:
            window = json.loads(self._read("upcoming-maintenance", wait=False))
            return parse_time(window["window_start_time"])
        except (MetadataError, ValueError, KeyError, TypeError, OSError):
            return None


class AzureEvents:
    """Scheduled Events: ``Preempt``/``Terminate`` for this VM, each seen once per
    ``DocumentIncarnation``."""
    name = "azure"
    interval = 1.0
    API = "2020-07-01"
    KINDS = ("Preempt", "Terminate")

    def __init__(self, env=os.environ, http: Http | None = None, clock=time.time):
        self.root = _endpoint(env, "TRAINER_AZURE_METADATA_ENDPOINT", "http://169.254.169.254")
        self.http, self.clock = http or Http(), clock
        self._incarnation = None
        self._vm: str | None = None
        self.seen: list[str] = []  # event ids to acknowledge once stopped

    @property
    def url(self) -> str:
        return f"{self.root}/metadata/scheduledevents?api-version={self.API}"

    def poll(self) -> list[Notice]:
        # (the first request also switches the service on for this VM, and may take a while)
        status, _, body = self.http.request("GET", self.url, {"Metadata": "true"}, 120.0 if self._vm is None else 5.0)
        if status != 200:
            raise MetadataError(f"GET scheduledevents: HTTP {status}")
        doc = _json(body, "scheduledevents")
        if doc.get("DocumentIncarnation") == self._incarnation:
            return []
        self._incarnation = doc.get("DocumentIncarnation")
        vm = self._vm_name()
        notices = []
        for event in doc.get("Events") or []:
            mine = not event.get("Resources") or not vm or vm in event["Resources"]
            if event.get("EventType") in self.KINDS and mine and event.get("EventId") not in self.seen:
                self.seen.append(event["EventId"])
                when = event.get("NotBefore")
                notices.append(Notice("azure", parse_time(when) if when else None, detail=event["EventType"]))
        return notices

    def _vm_name(self) -> str:
        if self._vm is None:
            status, _, body = self.http.request(
                "GET", f"{self.root}/metadata/instance/compute/name?api-version=2021-02-01&format=text",
                {"Metadata": "true"}, 5.0)
            self._vm = body.decode().strip() if status == 200 else ""
        return self._vm

    def acknowledge(self) -> None:
        """Tell the platform it may go ahead: the run has committed and stopped."""
        if self.seen:
            body = json.dumps({"StartRequests": [{"EventId": e} for e in self.seen]}).encode()
            self.http.request("POST", self.url, {"Metadata": "true", "Content-Type": "application/json"}, 5.0, body)


def sources_for(platforms: list[str], env=os.environ, http: Http | None = None) -> list:
    """The sources that watch ``platforms`` (names from ``config.NOTICE_PLATFORMS``)."""
    made = []
    for platform in platforms:
        if platform == "aws":
            made.append(AwsSpot(env, http))
        elif platform == "gce":
            made += [GceWatch("preempted", env, http), GceWatch("maintenance-event", env, http)]
        elif platform == "azure":
            made.append(AzureEvents(env, http))
    return made


def parse_time(text: str) -> float:
    """RFC 3339 (AWS, GCE: ``2017-09-18T08:22:00Z``) or RFC 1123 (Azure: ``Mon, 19 Sep 2016
    18:29:47 GMT``) as a UNIX time."""
    text = text.strip()
    if "," in text:
        return email.utils.parsedate_to_datetime(text).timestamp()
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _json(body: bytes, what: str):
    try:
        doc = json.loads(body)
    except ValueError:
        raise MetadataError(f"{what}: not JSON ({body[:60]!r})") from None
    if not isinstance(doc, dict):
        raise MetadataError(f"{what}: expected a JSON object, got {body[:60]!r}")
    return doc


def _header(headers: dict, name: str) -> str:
    return next((v for k, v in headers.items() if k.lower() == name.lower()), "")
