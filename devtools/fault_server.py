"""A real HTTP/1.1 origin on loopback whose misbehaviour tests switch on per resource.

It serves bytes with ETag/Last-Modified, single Range requests, If-Range and If-None-Match,
and can fail on purpose: status codes with Retry-After, dropped connections mid-body,
ignoring Range, a wrong Content-Range, 416, redirects, slow bodies, bodies that drip a byte at
a time or stall (before the headers or mid-body), 206 answers without the ETag, a file that
changes on the origin after a number of requests, answers held back until a test says so, and
a delay before every answer (a far origin). Every request is logged with its headers so tests
can assert what went over the wire, and ``timeline`` orders arrivals and finished bodies.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d+)-(\d*)$")


def _range_start(header: str | None) -> int:
    m = _RANGE.match(header or "")
    return int(m.group(1)) if m else 0


@dataclass
class Resource:
    data: bytes
    etag: str | None = None
    last_modified: str | None = None
    fail_statuses: list[int] = field(default_factory=list)  # consumed, one per GET
    retry_after: str | None = None
    ignore_range: bool = False
    ignore_if_range: bool = False  # serve the range even if the validator changed
    bad_content_range: bool = False
    always_416: bool = False
    drop_after: list[int] = field(default_factory=list)  # consumed: close after N body bytes
    delay_per_chunk: float = 0.0
    chunk: int = 64 * 1024
    redirect_to: str | None = None
    redirect_status: int = 302
    gate: threading.Event | None = None  # hold the body until set
    headers: dict[str, str] = field(default_factory=dict)  # sent on every answer
    accept_ranges: bool = True  # False: no Accept-Ranges header and Range is ignored
    stall_range_at: int | None = None  # the first range request starting here hangs
    stalled: bool = False
    content_length: bool = True  # False: no Content-Length, the body ends when we close
    stall_headers: bool = False  # read the request, never answer (until the server stops)
    stall_after: int | None = None  # send this many body bytes, then go silent
    drip_after: int | None = None  # send this many body bytes, then one byte per drip_interval
    drip_interval: float = 0.1
    omit_etag_in_206: bool = False  # a proxy that drops ETag from partial answers
    # The file changes on the origin once this many GETs have arrived (to next_data).
    change_after: int | None = None
    next_data: bytes | None = None
    gets: int = 0
    # Hold the headers of a range request starting at headers_gate_at until the event is set.
    headers_gate: threading.Event | None = None
    headers_gate_at: int | None = None
    header_delay: float = 0.0  # seconds before every GET is answered (a far origin)

    def __post_init__(self) -> None:
        # None means "make one up"; "" means "send none".
        if self.etag is None:
            self.etag = '"' + hashlib.sha256(self.data).hexdigest()[:20] + '"'
        if self.last_modified is None:
            self.last_modified = email.utils.formatdate(1_700_000_000, usegmt=True)

    def replace_data(self, data: bytes, etag: str | None = None) -> None:
        self.data = data
        self.etag = etag or '"' + hashlib.sha256(data).hexdigest()[:20] + '"'
        self.last_modified = email.utils.formatdate(time.time(), usegmt=True)


@dataclass(frozen=True)
class LoggedRequest:
    method: str
    path: str
    headers: dict[str, str]


class FaultServer:
    def __init__(self, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.resources: dict[str, Resource] = {}
        self.closing = threading.Event()
        self.log: list[LoggedRequest] = []
        self.body_bytes: dict[str, int] = {}  # body bytes written per path (origin traffic)
        # In order: ("request", path, first byte asked) as a GET arrives, ("last", path, first
        # byte asked) just before the last bytes of its body are written.
        self.timeline: list[tuple[str, str, int]] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self._serve(head=True)

            def do_GET(self) -> None:
                self._serve(head=False)

            def _serve(self, head: bool) -> None:
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.log.append(
                        LoggedRequest(
                            self.command, self.path, {k: v for k, v in self.headers.items()}
                        )
                    )
                    res = server.resources.get(path)
                    status = (
                        res.fail_statuses.pop(0) if res and res.fail_statuses and not head else None
                    )
                    drop = (
                        res.drop_after.pop(0)
                        if res and res.drop_after and not head and status is None
                        else None
                    )
                    if res is not None and not head:
                        res.gets += 1
                        if res.change_after is not None and res.gets > res.change_after:
                            assert res.next_data is not None
                            res.replace_data(res.next_data)
                            res.change_after = None
                if res is None:
                    return self._simple(404, b"not found")
                if not head:
                    server.note("request", path, _range_start(self.headers.get("Range")))
                    if res.header_delay:
                        server.closing.wait(timeout=res.header_delay)
                if status is not None:
                    extra = {"Retry-After": res.retry_after} if res.retry_after else {}
                    return self._simple(status, b"injected failure", extra)
                if res.stall_headers:
                    server.closing.wait(timeout=60)  # an origin that accepted and went silent
                    self.close_connection = True
                    return
                if res.redirect_to is not None:
                    return self._simple(
                        res.redirect_status, b"", {"Location": res.redirect_to, **res.headers}
                    )
                if res.etag and self.headers.get("If-None-Match") == res.etag:
                    return self._simple(304, b"", {"ETag": res.etag})
                data = res.data
                start, end, code = 0, len(data) - 1, 200
                rng = self.headers.get("Range")
                if_range = self.headers.get("If-Range")
                range_valid = (
                    res.ignore_if_range
                    or if_range is None
                    or if_range in (res.etag, res.last_modified)
                )
                if rng and not res.ignore_range and res.accept_ranges and range_valid:
                    if res.always_416:
                        return self._simple(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                    m = _RANGE.match(rng)
                    if m:
                        start = int(m.group(1))
                        end = int(m.group(2)) if m.group(2) else len(data) - 1
                        if start >= len(data):
                            return self._simple(416, b"", {"Content-Range": f"bytes */{len(data)}"})
                        end = min(end, len(data) - 1)
                        code = 206
                body = data[start : end + 1]
                if code == 206 and res.headers_gate is not None and start == res.headers_gate_at:
                    res.headers_gate.wait(timeout=30)
                self.send_response(code)
                if res.content_length:
                    self.send_header("Content-Length", str(len(body)))
                else:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.send_header("Content-Type", "application/octet-stream")
                if res.accept_ranges:
                    self.send_header("Accept-Ranges", "bytes")
                for name, value in res.headers.items():
                    self.send_header(name, value)
                if res.etag and not (code == 206 and res.omit_etag_in_206):
                    self.send_header("ETag", res.etag)
                if res.last_modified:
                    self.send_header("Last-Modified", res.last_modified)
                if code == 206:
                    shown = start + 1 if res.bad_content_range else start
                    self.send_header("Content-Range", f"bytes {shown}-{end}/{len(data)}")
                self.end_headers()
                if head:
                    return
                if res.gate is not None:
                    res.gate.wait(timeout=30)
                if code == 206 and start == res.stall_range_at and not res.stalled:
                    res.stalled = True
                    server.closing.wait(timeout=30)  # a connection that never delivers
                    return
                sent = 0
                try:
                    if res.stall_after is not None or res.drip_after is not None:
                        return self._slow_body(res, body)
                    for i in range(0, len(body), res.chunk):
                        piece = body[i : i + res.chunk]
                        if drop is not None and sent + len(piece) > drop:
                            self.wfile.write(piece[: max(0, drop - sent)])
                            server.count_body(path, max(0, drop - sent))
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if i + len(piece) >= len(body):
                            # Noted before the client can have it: a request logged before
                            # this was sent before the body ended.
                            server.note("last", path, start)
                        self.wfile.write(piece)
                        sent += len(piece)
                        server.count_body(path, len(piece))
                        if res.delay_per_chunk:
                            time.sleep(res.delay_per_chunk)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    self.close_connection = True

            def _slow_body(self, res: Resource, body: bytes) -> None:
                """Send the head of the body at once, then stall or drip the rest."""
                head = res.stall_after if res.stall_after is not None else res.drip_after
                assert head is not None
                self.wfile.write(body[:head])
                self.wfile.flush()
                server.count_body(self.path.split("?", 1)[0], len(body[:head]))
                if res.stall_after is not None:
                    server.closing.wait(timeout=60)
                else:
                    for i in range(head, len(body)):
                        if server.closing.wait(timeout=res.drip_interval):
                            break
                        self.wfile.write(body[i : i + 1])
                        self.wfile.flush()
                        server.count_body(self.path.split("?", 1)[0], 1)
                self.close_connection = True

            def _simple(
                self, code: int, body: bytes, headers: dict[str, str] | None = None
            ) -> None:
                self.send_response(code)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

        class Server(ThreadingHTTPServer):
            request_queue_size = 128  # a real listen backlog: tests open many connections

            def handle_error(self, request: object, client_address: object) -> None:
                pass  # clients that hang up (cancel tests do) are not news

        self.httpd = Server((host, 0), Handler)
        self.httpd.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.httpd.socket = tls.wrap_socket(self.httpd.socket, server_side=True)
            self.scheme = "https"
        self.host = host
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def __enter__(self) -> FaultServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def note(self, what: str, path: str, start: int) -> None:
        with self._lock:
            self.timeline.append((what, path, start))

    def count_body(self, path: str, n: int) -> None:
        with self._lock:
            self.body_bytes[path] = self.body_bytes.get(path, 0) + n

    def add(self, path: str, resource: Resource) -> str:
        self.resources[path] = resource
        return self.url(path)

    def url(self, path: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{path}"

    def requests_for(self, path: str, method: str = "GET") -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.log if r.path.split("?", 1)[0] == path and r.method == method]
