"""An HTTP proxy on 127.0.0.1 that forwards to an S3 server and injects faults on a seeded schedule.

What the n-th request meets is drawn from ``random.Random(seed)`` in the order requests arrive
(the draws are made under a lock, so a seed fixes the sequence of faults, while which client's
request meets which fault depends on how the clients interleave):

* ``5xx``: a burst of 1 to 4 requests answered 503 ``SlowDown`` or 500 ``InternalError`` with
  S3's XML error body; the request does not reach the store.
* ``reset before``: the connection is reset (RST) before the request is forwarded.
* ``reset after``: the request is forwarded, the store applies it, then the connection is reset
  instead of answered (the client sees a failure, the object was written or deleted).
* ``truncated``: the store's answer is sent with its full Content-Length but only half its body,
  then the connection is closed (drawn for an answer without a body, it waits for the next
  answer with one).
* ``stall``: the request is forwarded (the store applies it), then its answer is held for some
  seconds (a client that gave up meanwhile gets it on a connection it closed: lost).
* ``blackout``: from one drawn request on, every request is met with a reset for some seconds.

Each kind but the blackout is also injected once at a drawn request among the first
``Rates.each_by`` (or the first one after the blackout), so that a short run meets them all.

``counts`` says how many of each were injected. The proxy speaks HTTP/1.1 with keep-alive to
its clients, answers ``Expect: 100-continue`` and reads chunked request bodies; it opens one
connection to the store per client connection.
"""
from __future__ import annotations

import contextlib
import http.client
import http.server
import random
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass

from tests.emulators import s3_error_body

FIVE_XX = "5xx"
RESET_BEFORE = "reset before"
RESET_AFTER = "reset after"
TRUNCATED = "truncated"
STALL = "stall"
BLACKOUT = "blackout"
BLACKOUT_RESETS = "blackout resets"
KINDS = (FIVE_XX, RESET_BEFORE, RESET_AFTER, TRUNCATED, STALL)
_ERRORS = ((503, "SlowDown", "Please reduce your request rate."),
           (500, "InternalError", "We encountered an internal error. Please try again."))
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection"}


@dataclass(frozen=True)
class Rates:
    """Per request: the chance that each kind of fault starts there; how long stalls and the
    blackout last; the range the blackout's request number is drawn from, and the range in
    which each kind is injected at least once (at a drawn request, or the first one after the
    blackout if it falls inside)."""
    five_xx: float = 0.04
    reset_before: float = 0.03
    reset_after: float = 0.03
    truncated: float = 0.03
    stall: float = 0.02
    stall_s: tuple[float, float] = (1.0, 4.0)
    blackout_s: tuple[float, float] = (3.0, 6.0)
    blackout_at: tuple[int, int] = (10, 60)
    each_by: int = 80


class Schedule:
    """The faults of a seeded run, drawn request by request."""

    def __init__(self, seed: int, rates: Rates = Rates()):
        self.seed = seed
        self.rng = random.Random(seed)
        self.rates = rates
        self.blackout_at = self.rng.randint(*rates.blackout_at)
        self.blackout_s = self.rng.uniform(*rates.blackout_s)
        self._burst = 0  # requests of the current 5xx burst still to fail
        self._forced = sorted((self.rng.randint(1, rates.each_by), kind) for kind in KINDS)
        self._lock = threading.Lock()
        self.requests = 0
        self.blackout_until = None  # monotonic end of the blackout, once it began

    def next(self) -> tuple[str | None, float]:
        """(the fault the next request meets or None, a draw in [0, 1) for its details)."""
        with self._lock:
            self.requests += 1
            detail = self.rng.random()
            if self.requests == self.blackout_at:
                self.blackout_until = time.monotonic() + self.blackout_s
            if self.blackout_until is not None and time.monotonic() < self.blackout_until:
                return BLACKOUT, detail
            if self._burst:
                self._burst -= 1
                return FIVE_XX, detail
            if self._forced and self._forced[0][0] <= self.requests:
                return self._forced.pop(0)[1], detail
            draw, r = self.rng.random(), self.rates
            for kind, chance in ((FIVE_XX, r.five_xx), (RESET_BEFORE, r.reset_before), (RESET_AFTER, r.reset_after),
                                 (TRUNCATED, r.truncated), (STALL, r.stall)):
                if draw < chance:
                    if kind == FIVE_XX:
                        self._burst = self.rng.randint(0, 3)
                    return kind, detail
                draw -= chance
            return None, detail


class FaultyProxy:
    """``url`` forwards to ``upstream`` (``http://127.0.0.1:PORT``) through ``schedule``'s faults."""

    def __init__(self, upstream: str, schedule: Schedule):
        self.upstream = upstream.split("://", 1)[1]
        self.schedule = schedule
        self.counts: Counter = Counter()
        self._lock = threading.Lock()
        self._idle = threading.Condition()
        self._in_flight = 0
        self._truncations = 0  # drawn, waiting for an answer with a body
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    def count(self, kind: str) -> None:
        with self._lock:
            self.counts[kind] += 1

    def truncates(self, drawn: bool, has_body: bool) -> bool:
        """Whether to cut this answer short: a truncation drawn for an answer without a body
        waits for the next answer with one."""
        with self._lock:
            self._truncations += drawn
            if not (has_body and self._truncations):
                return False
            self._truncations -= 1
            self.counts[TRUNCATED] += 1
            return True

    @contextlib.contextmanager
    def forwarding(self):
        """Marks a request on its way to the store and back (see :meth:`wait_idle`)."""
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float = 60) -> None:
        """Until no request is on its way to the store: a client killed mid-request may have
        handed one over whole, which the store then applies a moment after the kill."""
        deadline = time.monotonic() + timeout_s
        with self._idle:
            while self._in_flight:
                left = deadline - time.monotonic()
                assert left > 0, f"{self._in_flight} request(s) still on their way to the store after {timeout_s} s"
                self._idle.wait(left)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(proxy: FaultyProxy):
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, and "100 Continue" for clients that expect it
        upstream: http.client.HTTPConnection | None = None

        def handle_one_request(self):
            try:
                super().handle_one_request()
            except (ConnectionError, TimeoutError):
                self.close_connection = True

        def _handle(self):
            body = self._read_body()
            fault, detail = proxy.schedule.next()
            if fault == BLACKOUT:
                proxy.count(BLACKOUT_RESETS)
                return self._reset()
            if fault == FIVE_XX:
                return self._five_xx(detail)
            if fault == RESET_BEFORE:
                proxy.count(fault)
                return self._reset()
            status, reason, headers, data = self._forward(body)
            if fault == STALL:
                proxy.count(fault)
                low, high = proxy.schedule.rates.stall_s
                time.sleep(low + detail * (high - low))
            if fault == RESET_AFTER:
                proxy.count(fault)
                return self._reset()
            if proxy.truncates(fault == TRUNCATED, self.command != "HEAD" and len(data) >= 2):
                self._answer(status, reason, headers, data, len(data) // 2)
                self.close_connection = True
                return None
            return self._answer(status, reason, headers, data)

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = _handle

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                return self._read_chunks()
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if len(body) < length:  # the client went away mid-body: a store would not apply it either
                raise ConnectionAbortedError("request body cut short")
            return body

        def _read_chunks(self) -> bytes:
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                if len(parts[-1]) < size or not self.rfile.readline():
                    raise ConnectionAbortedError("chunked request body cut short")

        def _forward(self, body: bytes):
            """The store's answer to this request, on this client connection's store connection."""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP | {"content-length"}}
            if body or self.command in ("PUT", "POST"):
                headers["Content-Length"] = str(len(body))
            with proxy.forwarding():
                for attempt in range(2):  # the store closes idle connections: one fresh try
                    if self.upstream is None:
                        self.upstream = http.client.HTTPConnection(proxy.upstream, timeout=60)
                    try:
                        self.upstream.request(self.command, self.path, body=body or None, headers=headers)
                        resp = self.upstream.getresponse()
                        return resp.status, resp.reason, resp.getheaders(), resp.read()
                    except (ConnectionError, http.client.HTTPException):
                        self.upstream.close()
                        self.upstream = None
                        if attempt:
                            raise
            raise AssertionError("unreachable")

        def _answer(self, status, reason, headers, data: bytes, send: int | None = None) -> None:
            self.send_response_only(status, reason)
            for k, v in headers:
                if k.lower() not in _HOP_BY_HOP | {"content-length"}:
                    self.send_header(k, v)
            if self.command == "HEAD":
                length = {k.lower(): v for k, v in headers}.get("content-length", "0")
            else:
                length = str(len(data))
            self.send_header("Content-Length", length)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data[:send])
            self.wfile.flush()

        def _five_xx(self, detail: float) -> None:
            proxy.count(FIVE_XX)
            status, code, message = _ERRORS[int(detail * len(_ERRORS))]
            body = s3_error_body(code, message)
            self._answer(status, None, [("Content-Type", "application/xml")], body)

        def _reset(self) -> None:
            """Close with RST (SO_LINGER 0): the client sees "connection reset by peer"."""
            self.close_connection = True
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.connection.close()

        def finish(self):
            try:
                super().finish()
            except OSError:
                pass
            if self.upstream is not None:
                self.upstream.close()

        def log_message(self, *args):
            pass

    return Handler
