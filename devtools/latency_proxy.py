"""A TCP relay on loopback that makes an origin look far away: every request waits
``delay`` seconds before it is passed on, so every response starts that much later.

nginx cannot delay a response, so the benchmark puts this in front of it. It holds back
what the client sends (request heads are small: one ``recv`` per request) and moves what
the origin answers with ``splice(2)`` through a pipe, so response bytes never enter Python
and the relay is not the bottleneck (the benchmark measures that too: the same download
through the relay with no delay). Connection set-up itself is not delayed.

    python -m devtools.latency_proxy --upstream-port 8080 --delay-ms 50
    # prints "PORT <n>" once listening; runs until terminated (or --max-seconds)
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import socket
import struct
import sys
import threading
import time

PIPE_SIZE = 1 << 20
IDLE_SECONDS = 60  # a connection silent this long (both ways) is closed
MAX_CONNECTIONS = 512
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def _set_timeouts(sock: socket.socket, seconds: int) -> None:
    """Kernel-level timeouts: the sockets stay blocking (splice needs that), yet no call can
    block for longer than ``seconds``."""
    timeval = struct.pack("ll", seconds, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _shut(sock: socket.socket, how: int) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


def _requests(client: socket.socket, upstream: socket.socket, delay: float) -> None:
    """Client -> origin, each chunk held back by ``delay`` (a chunk is one request head)."""
    try:
        while True:
            data = client.recv(64 * 1024)
            if not data:
                break
            if delay:
                time.sleep(delay)
            upstream.sendall(data)
    except OSError:
        pass  # reset, timeout: the other direction notices too
    _shut(upstream, socket.SHUT_WR)


def _responses(upstream: socket.socket, client: socket.socket) -> None:
    """Origin -> client through a pipe with splice: no copy into Python."""
    read_end, write_end = os.pipe()
    with contextlib.suppress(OSError):
        fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
    try:
        while True:
            moved = os.splice(upstream.fileno(), write_end, PIPE_SIZE)
            if moved == 0:
                break
            while moved:
                moved -= os.splice(read_end, client.fileno(), moved)
    except OSError as exc:
        if exc.errno not in (errno.EAGAIN, errno.ECONNRESET, errno.EPIPE):
            print(f"latency_proxy: {exc}", file=sys.stderr)
    finally:
        os.close(read_end)
        os.close(write_end)
        _shut(client, socket.SHUT_WR)


def _relay(
    client: socket.socket, upstream_port: int, delay: float, slots: threading.Semaphore
) -> None:
    try:
        upstream = socket.create_connection(("127.0.0.1", upstream_port), timeout=10)
    except OSError:
        client.close()
        slots.release()
        return
    upstream.settimeout(None)
    for sock in (client, upstream):
        _set_timeouts(sock, IDLE_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    up = threading.Thread(target=_requests, args=(client, upstream, delay), daemon=True)
    up.start()
    _responses(upstream, client)
    up.join(IDLE_SECONDS + 5)
    client.close()
    upstream.close()
    slots.release()


def serve(upstream_port: int, delay: float, max_seconds: float) -> None:
    listener = socket.create_server(("127.0.0.1", 0), backlog=128)
    listener.settimeout(0.5)
    print(f"PORT {listener.getsockname()[1]}", flush=True)
    slots = threading.Semaphore(MAX_CONNECTIONS)
    deadline = time.monotonic() + max_seconds
    while time.monotonic() < deadline:
        try:
            client, _ = listener.accept()
        except TimeoutError:
            continue
        client.settimeout(None)
        if not slots.acquire(timeout=IDLE_SECONDS):
            client.close()
            continue
        threading.Thread(
            target=_relay, args=(client, upstream_port, delay, slots), daemon=True
        ).start()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--delay-ms", type=float, default=50.0)
    parser.add_argument("--max-seconds", type=float, default=6 * 3600)
    args = parser.parse_args()
    serve(args.upstream_port, args.delay_ms / 1000, args.max_seconds)


if __name__ == "__main__":
    main()
