"""HTTP over urllib3, with our own redirect handling.

urllib3 can follow redirects itself, but its rule for dropping headers is a fixed list
(Authorization, Cookie, Proxy-Authorization) and it follows https->http. We need every
caller-supplied header treated as a credential, scoped to the origin that was asked, and no
downgrade, so redirects are followed here, one hop at a time.

A request can be cancelled while it waits for the server's answer: the pool's connections
let the thread that is waiting on them be found, and a cancel shuts their socket down
(closing a socket does not wake a thread blocked in ``recv()``; shutting it down does).
"""

from __future__ import annotations

import http.client
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import SSLError

from ._version import __version__
from .cancel import CancelToken
from .core.httpwire import REDIRECTS, next_hop, origin_of, split_userinfo
from .core.retry import RetryableError
from .errors import CancelledError, DownloadError, InsecureRedirectError
from .redact import install_log_redaction, redact_url

MAX_REDIRECTS = 10
install_log_redaction()
USER_AGENT = f"modelfetch/{__version__}"
_T = TypeVar("_T")

_pool_lock = threading.Lock()
_pool: urllib3.PoolManager | None = None
_waiting = threading.local()  # .watch: the _Watch of the request this thread is sending


def shutdown_socket(sock: socket.socket | None) -> None:
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass  # already closed or never connected


class _Watch:
    """The connection one request is waiting on, so a cancel from another thread can
    unblock it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._conn: HTTPConnection | None = None
        self.fired = False

    def attach(self, conn: HTTPConnection) -> None:
        with self._lock:
            self._conn = conn
            fired = self.fired
        if fired:
            shutdown_socket(conn.sock)

    def detach(self) -> None:
        with self._lock:
            self._conn = None

    def fire(self) -> None:
        with self._lock:
            self.fired = True
            conn = self._conn
        if conn is not None:
            shutdown_socket(conn.sock)


def _watched_getresponse(conn: HTTPConnection, original: Callable[[], _T]) -> _T:
    watch: _Watch | None = getattr(_waiting, "watch", None)
    if watch is None:
        return original()
    watch.attach(conn)
    try:
        return original()
    finally:
        watch.detach()


class _Connection(HTTPConnection):
    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        return _watched_getresponse(self, super().getresponse)


class _TlsConnection(HTTPSConnection):
    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]
        return _watched_getresponse(self, super().getresponse)


class _Pool(HTTPConnectionPool):
    ConnectionCls = _Connection


class _TlsPool(HTTPSConnectionPool):
    ConnectionCls = _TlsConnection


def pool() -> urllib3.PoolManager:
    """One process-wide pool (thread-safe), so connections are reused across calls."""
    global _pool
    with _pool_lock:
        if _pool is None:
            manager = urllib3.PoolManager(num_pools=32, maxsize=16, retries=False)
            manager.pool_classes_by_scheme = {"http": _Pool, "https": _TlsPool}
            _pool = manager
        return _pool


@dataclass
class Response:
    raw: urllib3.BaseHTTPResponse
    url: str  # the final URL after redirects (unredacted: internal use only)
    waited: float = 0.0  # seconds from sending the last hop's request to its headers

    @property
    def status(self) -> int:
        return self.raw.status

    def header(self, name: str) -> str | None:
        value = self.raw.headers.get(name)
        return value if isinstance(value, str) else None

    def readinto(self, buf: memoryview, *, bounded: bool) -> int:
        """Read what has arrived (at least one byte, at most ``len(buf)``) into ``buf``.

        Returns 0 at the end of the body. Returns as soon as any data is there, so progress,
        cancellation and stall detection stay responsive on slow links.

        With ``bounded`` the caller promises ``len(buf)`` is no more than the body bytes
        still due (we always know that for a sized body: it is what the segment lacks).
        Then bytes go straight from the socket's buffer into ``buf``: urllib3's own
        ``readinto`` copies through ``read()``, and ``http.client``'s fills the whole buffer
        before returning. Chunked or unsized bodies go through ``http.client``'s ``read1``,
        which knows their framing.
        """
        fp = getattr(self.raw, "_fp", None)
        if isinstance(fp, http.client.HTTPResponse):
            stream = getattr(fp, "fp", None)
            if bounded and not fp.chunked and stream is not None and hasattr(stream, "readinto1"):
                return int(stream.readinto1(buf))
            data = fp.read1(len(buf))
        else:
            data = self.raw.read1(len(buf), decode_content=False)
        buf[: len(data)] = data
        return len(data)

    def abort(self) -> None:
        """Unblock a thread stuck reading this response (from another thread).

        Closing a socket does not wake a thread blocked in recv(); shutting it down does.
        """
        conn = getattr(self.raw, "connection", None)
        shutdown_socket(getattr(conn, "sock", None))

    def close(self) -> None:
        # Bodies are read around urllib3's bookkeeping, so never hand the connection back
        # for reuse; a fresh TCP connection per multi-megabyte body costs nothing measurable.
        self.raw.close()
        self.raw.release_conn()


def open_url(
    url: str,
    *,
    headers: Mapping[str, str],
    credentials: Mapping[str, str],
    connect_timeout: float,
    read_timeout: float,
    method: str = "GET",
    follow_cross_origin: bool = True,
    cancel: CancelToken | None = None,
) -> Response:
    """Send a request and follow redirects; return the first non-redirect response.

    ``credentials`` are sent only while the request goes to the origin of ``url``. A
    redirect from https to http is refused. Transport failures become RetryableError; TLS
    failures become DownloadError (retrying would not fix a bad certificate). ``cancel``
    interrupts the wait for an answer at once (CancelledError); a connection attempt that
    hangs is bounded by ``connect_timeout``.
    """
    url, userinfo_creds = split_userinfo(url)
    creds = {**userinfo_creds, **credentials}
    try:
        asked_origin = origin_of(url)
    except ValueError:
        raise DownloadError(f"malformed URL {redact_url(url)} (bad port or brackets)") from None
    timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
    current = url
    for _hop in range(MAX_REDIRECTS + 1):
        send = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity", **headers}
        if origin_of(current) == asked_origin:
            send.update(creds)
        sent = time.monotonic()
        raw = _send(method, current, send, timeout, cancel)
        if raw.status not in REDIRECTS:
            return Response(raw, current, time.monotonic() - sent)
        try:
            target = next_hop(
                current, raw.headers.get("Location"), raw.status, asked_origin, follow_cross_origin
            )
        except BaseException:
            raw.close()
            raise
        if target is None:
            return Response(raw, current)  # the caller wants this redirect's headers
        raw.close()  # never drain a redirect body: a hostile server could make it endless
        current = target
    raise InsecureRedirectError(
        f"more than {MAX_REDIRECTS} redirects starting at {redact_url(url)}"
    )


def _send(
    method: str,
    url: str,
    headers: dict[str, str],
    timeout: urllib3.Timeout,
    cancel: CancelToken | None,
) -> urllib3.BaseHTTPResponse:
    """One request, no redirects followed; the wait for its answer can be cancelled."""
    watch = _Watch()
    unregister = cancel.on_cancel(watch.fire) if cancel is not None else None
    _waiting.watch = watch
    try:
        if watch.fired:
            raise CancelledError("cancelled by the caller; partial data is kept for resume")
        return pool().request(
            method,
            url,
            headers=headers,
            redirect=False,
            retries=False,
            preload_content=False,
            decode_content=False,
            timeout=timeout,
        )
    except SSLError as exc:
        if watch.fired:
            raise CancelledError("cancelled by the caller") from None
        raise DownloadError(f"TLS error talking to {redact_url(url)}: {exc}") from None
    except Urllib3HTTPError as exc:
        if watch.fired:
            raise CancelledError(
                "cancelled by the caller; partial data is kept for resume"
            ) from None
        raise RetryableError(f"{type(exc).__name__} for {redact_url(url)}") from None
    finally:
        _waiting.watch = None
        if unregister is not None:
            unregister()
