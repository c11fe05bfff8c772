"""Stub instance metadata services on 127.0.0.1, each speaking its platform's documented protocol,
and a fake platform that announces a preemption and then kills the process at the deadline.

* AWS IMDSv2: ``PUT /latest/api/token`` with ``X-aws-ec2-metadata-token-ttl-seconds`` (1-21600)
  gives a token; every GET needs ``X-aws-ec2-metadata-token`` (401 without a valid one);
  ``spot/instance-action`` and ``events/recommendations/rebalance`` are 404 until announced.
* GCE: ``Metadata-Flavor: Google`` required (403 without), echoed in every answer with an
  ``ETag``; ``?wait_for_change=true`` hangs until the value changes (or ``timeout_sec``),
  and returns at once when ``last_etag`` is not the current one.
* Azure Scheduled Events: ``Metadata: true`` and ``api-version`` required (400 without);
  ``{"DocumentIncarnation", "Events"}``, the incarnation growing with every change; a POST of
  ``{"StartRequests": [{"EventId"}]}`` acknowledges (and ends) events.
"""
from __future__ import annotations

import email.utils
import hashlib
import json
import os
import secrets
import signal
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit


def rfc3339(when: float) -> str:
    return datetime.fromtimestamp(when, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Stub:
    """A threaded HTTP server on 127.0.0.1 whose handler calls ``self.answer``; every request is
    counted in ``requests``; ``fault`` ("hang", "reset", "garbage") makes it misbehave."""

    def __init__(self):
        self.lock = threading.Condition()
        self.requests: list[tuple[str, str, dict]] = []
        self.fault: str | None = None
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                stub._serve(self, "GET")

            def do_PUT(self):
                stub._serve(self, "PUT")

            def do_POST(self):
                stub._serve(self, "POST")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        with self.lock:
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def _serve(self, handler, method: str) -> None:
        headers = {k.lower(): v for k, v in handler.headers.items()}
        length = int(headers.get("content-length") or 0)
        body = handler.rfile.read(length) if length else b""
        with self.lock:
            self.requests.append((method, handler.path, headers))
        if self.fault == "hang":
            time.sleep(3600)
        if self.fault == "reset":
            handler.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            handler.connection.close()
            return
        if self.fault == "garbage":
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n\x00\xff{garb\x01")
            return
        url = urlsplit(handler.path)
        status, extra, payload = self.answer(method, url.path, parse_qs(url.query), headers, body)
        handler.send_response(status)
        for key, value in extra.items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def answer(self, method, path, query, headers, body) -> tuple[int, dict, bytes]:
        raise NotImplementedError


class AwsImds(Stub):
    def __init__(self):
        super().__init__()
        self.tokens: set[str] = set()
        self.documents: dict[str, dict] = {}

    def announce_interruption(self, deadline: float, action: str = "terminate") -> None:
        self.documents["/latest/meta-data/spot/instance-action"] = {"action": action, "time": rfc3339(deadline)}

    def recommend_rebalance(self) -> None:
        self.documents["/latest/meta-data/events/recommendations/rebalance"] = {"noticeTime": rfc3339(time.time())}

    def answer(self, method, path, query, headers, body):
        if path == "/latest/api/token":
            ttl = headers.get("x-aws-ec2-metadata-token-ttl-seconds", "")
            if method != "PUT" or not ttl.isdigit() or not 1 <= int(ttl) <= 21600:
                return 400, {}, b""
            token = secrets.token_urlsafe(32)
            self.tokens.add(token)
            return 200, {"Content-Type": "text/plain"}, token.encode()
        if headers.get("x-aws-ec2-metadata-token") not in self.tokens:
            return 401, {}, b""
        if method != "GET" or path not in self.documents:
            return 404, {}, b""
        return 200, {"Content-Type": "text/plain"}, json.dumps(self.documents[path]).encode()


class GceMetadata(Stub):
    ROOT = "/computeMetadata/v1/instance/"

    def __init__(self):
        super().__init__()
        self.values = {"preempted": "FALSE", "maintenance-event": "NONE"}

    def set(self, key: str, value: str) -> None:
        with self.lock:
            self.values[key] = value
            self.lock.notify_all()

    def announce_maintenance(self, start: float) -> None:
        self.set("upcoming-maintenance", json.dumps({"type": "SCHEDULED", "maintenance_status": "PENDING",
                                                     "window_start_time": rfc3339(start),
                                                     "window_end_time": rfc3339(start + 3600)}))
        self.set("maintenance-event", "TERMINATE_ON_HOST_MAINTENANCE")

    def answer(self, method, path, query, headers, body):
        flavor = {"Metadata-Flavor": "Google", "Content-Type": "application/text"}
        if headers.get("metadata-flavor") != "Google" or "x-forwarded-for" in headers:
            return 403, flavor, b"Missing required header: Metadata-Flavor"
        key = path[len(self.ROOT):] if path.startswith(self.ROOT) else None
        with self.lock:
            if method != "GET" or key not in self.values:
                return 404, flavor, b"not found"
            if query.get("wait_for_change") == ["true"]:  # until the value's ETag is not last_etag
                etag = query.get("last_etag", [self._etag(key)])[0]
                wait_until = time.monotonic() + float(query.get("timeout_sec", ["3600"])[0])
                while etag == self._etag(key) and time.monotonic() < wait_until:
                    self.lock.wait(min(1.0, wait_until - time.monotonic()))
            value = self.values[key]
            return 200, {**flavor, "ETag": self._etag(key)}, value.encode()

    def _etag(self, key: str) -> str:
        return hashlib.sha1(self.values[key].encode()).hexdigest()[:16]


class AzureEvents(Stub):
    VM = "trainer-vm-0"

    def __init__(self):
        super().__init__()
        self.incarnation = 1
        self.events: list[dict] = []
        self.acknowledged: list[str] = []

    def announce_preemption(self, not_before: float, resources=None) -> str:
        event_id = str(uuid.uuid4()).upper()
        with self.lock:
            self.events.append({"EventId": event_id, "EventType": "Preempt", "ResourceType": "VirtualMachine",
                                "Resources": resources or [self.VM], "EventStatus": "Scheduled",
                                "NotBefore": email.utils.formatdate(not_before, usegmt=True),
                                "Description": "", "EventSource": "Platform", "DurationInSeconds": -1})
            self.incarnation += 1
        return event_id

    def answer(self, method, path, query, headers, body):
        if headers.get("metadata") != "true":
            return 400, {}, json.dumps({"error": "Bad request. Required metadata header not specified"}).encode()
        if "api-version" not in query:
            return 400, {}, json.dumps({"error": "Bad request. api-version was not specified in the request"}).encode()
        if path == "/metadata/instance/compute/name" and query.get("format") == ["text"]:
            return 200, {"Content-Type": "text/plain"}, self.VM.encode()
        if path != "/metadata/scheduledevents":
            return 404, {}, b""
        with self.lock:
            if method == "POST":
                done = [r["EventId"] for r in json.loads(body)["StartRequests"]]
                self.acknowledged += done
                self.events = [e for e in self.events if e["EventId"] not in done]
                self.incarnation += 1
                return 200, {}, b""
            doc = {"DocumentIncarnation": self.incarnation, "Events": self.events}
        return 200, {"Content-Type": "application/json"}, json.dumps(doc).encode()


class Platform(threading.Thread):
    """What a cloud does at the deadline: SIGTERM to the process, then SIGKILL ``kill_after_s``
    later (30 s: GCE's shutdown period, Kubernetes's default grace). ``killed`` says what it had
    to send (the trainer should have committed and stopped before the first)."""

    def __init__(self, pid: int, deadline: float, kill_after_s: float = 30.0):
        super().__init__(daemon=True)
        self.pid, self.deadline, self.kill_after_s = pid, deadline, kill_after_s
        self.cancelled = threading.Event()
        self.killed: list[str] = []

    def run(self):
        for sig, at in ((signal.SIGTERM, self.deadline), (signal.SIGKILL, self.deadline + self.kill_after_s)):
            if self.cancelled.wait(max(0.0, at - time.time())):
                return
            try:
                os.kill(self.pid, sig)
                self.killed.append(sig.name)
            except ProcessLookupError:
                return
