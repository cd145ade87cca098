"""``modelfetch serve`` under load: a burst of clients, idle and trickling connections, a
bounded number of threads, and logs that never show a query string."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest

import modelfetch
from devtools.fault_server import FaultServer, Resource
from devtools.hub_emulator import HubEmulator
from modelfetch import ensure
from modelfetch.mirror import MirrorServer

from .test_mirror import FILE, REPO

SECRET = "sig_SUPERSECRET_7781"
CLIENTS = 200
ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = Path(modelfetch.__file__).resolve().parents[1]


@pytest.fixture
def signed_upstream(hub: HubEmulator, blob: bytes) -> str:
    """The hub + CDN emulation: the file redirects to a presigned CDN URL (a signature in
    its query string)."""
    hub.create_repo(REPO, {FILE: blob})
    return hub.endpoint


def signatures(hub: HubEmulator) -> list[str]:
    """The signatures the mirror received from the hub (and sent to the CDN)."""
    found = []
    for r in hub.cdn.requests("GET"):
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(r.path).query)
        found += query.get("X-Amz-Signature", [])
    assert found
    return found


def entry_key(tmp_path: Path, server: FaultServer, blob: bytes) -> tuple[Path, str]:
    cache = tmp_path / "mirror-cache"
    url = server.add("/plain/model.bin", Resource(blob))
    return cache, ensure(url, cache_dir=cache).cache_key


def get_range(address: tuple[str, int], path: str, first: int, last: int) -> bytes:
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("GET", path, headers={"Range": f"bytes={first}-{last}"})
        resp = conn.getresponse()
        assert resp.status == 206
        return resp.read()
    finally:
        conn.close()


def burst(address: tuple[str, int], path: str, blob: bytes) -> list[BaseException]:
    """CLIENTS clients at once, each on its own connection with a 30 s timeout."""
    start = threading.Barrier(CLIENTS)
    errors: list[BaseException] = []

    def client(i: int) -> None:
        first = (i * 9973) % (len(blob) - 5000)
        try:
            start.wait(30)
            assert get_range(address, path, first, first + 4999) == blob[first : first + 5000]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)
    return errors


@pytest.fixture
def idle_sockets(request: pytest.FixtureRequest) -> Iterator[list[socket.socket]]:
    opened: list[socket.socket] = []
    yield opened
    for s in opened:
        s.close()


def test_burst_of_range_requests_with_idle_connections_open(
    tmp_path: Path,
    server: FaultServer,
    blob: bytes,
    idle_sockets: list[socket.socket],
) -> None:
    cache, key = entry_key(tmp_path, server, blob)
    with MirrorServer(cache, offline=True) as mirror:
        for _ in range(50):  # clients that connect and say nothing
            idle_sockets.append(socket.create_connection(mirror.server_address, timeout=30))
        trickler = socket.create_connection(mirror.server_address, timeout=30)
        idle_sockets.append(trickler)
        trickler.sendall(b"GET /healthz HTTP/1.1\r\nX-Slow: ")  # and never finishes
        assert burst(mirror.server_address, f"/by-key/{key}", blob) == []


@pytest.mark.parametrize("client", ["idle", "trickling"])
def test_idle_and_trickling_connections_are_cut_off(
    client: str, tmp_path: Path, server: FaultServer, blob: bytes
) -> None:
    cache, key = entry_key(tmp_path, server, blob)
    with MirrorServer(cache, offline=True, idle_timeout=0.5) as mirror:
        sock = socket.create_connection(mirror.server_address, timeout=20)
        try:
            if client == "trickling":
                sock.sendall(b"GET /healthz HTTP/1.1\r\n")
                for _ in range(100):  # a header byte every 0.1 s: never a whole head
                    try:
                        sock.sendall(b"X")
                    except OSError:
                        break
                    time.sleep(0.1)
            assert sock.recv(1024) == b""  # the server hung up (it used to wait forever)
        except ConnectionResetError:
            pass  # hung up while data was still unread: also closed
        finally:
            sock.close()
        assert get_range(mirror.server_address, f"/by-key/{key}", 0, 9) == blob[:10]


def test_keep_alive_serves_several_requests_on_one_connection(
    tmp_path: Path, server: FaultServer, blob: bytes
) -> None:
    cache, key = entry_key(tmp_path, server, blob)
    with MirrorServer(cache, offline=True) as mirror:
        conn = http.client.HTTPConnection(*mirror.server_address, timeout=30)
        for i in range(3):
            conn.request("GET", f"/by-key/{key}", headers={"Range": f"bytes={i}-{i + 9}"})
            resp = conn.getresponse()
            assert resp.status == 206 and resp.read() == blob[i : i + 10]
        conn.request("HEAD", f"/by-key/{key}")
        head = conn.getresponse()
        assert head.read() == b"" and head.getheader("Content-Length") == str(len(blob))
        conn.request("POST", "/healthz")
        assert conn.getresponse().status == 405
        conn.close()


def serve_process(cache: Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), str(ROOT)])}
    return subprocess.Popen(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), "serve", "--port", "0",
         *args],
        stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def mirror_url(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "modelfetch mirror on http://127.0.0.1:PORT (...)"
    return first.split(" on ", 1)[1].split(" ", 1)[0]


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    raise AssertionError("no thread count")


def test_mirror_process_threads_stay_bounded_with_many_open_connections(
    tmp_path: Path, server: FaultServer, blob: bytes
) -> None:
    cache, key = entry_key(tmp_path, server, blob)
    proc = serve_process(cache, "--offline")
    conns: list[http.client.HTTPConnection] = []
    try:
        host, port = mirror_url(proc).removeprefix("http://").rsplit(":", 1)
        for i in range(CLIENTS):  # each keeps its connection open after its answer
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.request("GET", f"/by-key/{key}", headers={"Range": f"bytes={i}-{i}"})
            resp = conn.getresponse()
            assert resp.status == 206 and resp.read() == blob[i : i + 1]
            conns.append(conn)
        assert threads_of(proc.pid) <= 40  # not a thread per connection
    finally:
        for conn in conns:
            conn.close()
        proc.terminate()
        proc.wait(timeout=10)


def test_no_log_line_holds_a_query_string(
    tmp_path: Path,
    signed_upstream: str,
    hub: HubEmulator,
    blob: bytes,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    with MirrorServer(tmp_path / "c", upstream=signed_upstream) as mirror:
        address = mirror.server_address
        for target in (
            f"/{REPO}/resolve/main/{FILE}?token={SECRET}",  # pulls through the signed CDN
            f"/{REPO}/resolve/main/{FILE}?token={SECRET}",  # a hit
            f"/{REPO}/resolve/main/missing.gguf?sig={SECRET}",
            f"/healthz?sig={SECRET}",
            f"/nope?X-Amz-Signature={SECRET}",
        ):
            conn = http.client.HTTPConnection(*address, timeout=30)
            conn.request("GET", target)
            conn.getresponse().read()
            conn.close()
        raw = socket.create_connection(address, timeout=30)
        raw.sendall(f"BREW /x?sig={SECRET} HTTP/1.1\r\n\r\n".encode())
        raw.recv(1024)
        raw.close()
    messages = [r.getMessage() for r in caplog.records]
    assert any("/healthz?<redacted>" in m for m in messages)  # requests are logged ...
    pulls = [r.getMessage() for r in caplog.records if r.name.startswith("urllib3")]
    assert any("?<redacted>" in m for m in pulls)  # ... the signed pull too ...
    for secret in (SECRET, "X-Amz-Signature", *signatures(hub)):  # ... redacted
        assert not any(secret in m for m in messages) and secret not in caplog.text


def test_serve_verbose_stderr_holds_no_query_string(
    tmp_path: Path, signed_upstream: str, hub: HubEmulator, blob: bytes
) -> None:
    proc = serve_process(tmp_path / "c", "--upstream", signed_upstream, "-vv")
    try:
        url = mirror_url(proc)
        host, port = url.removeprefix("http://").rsplit(":", 1)
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", f"/{REPO}/resolve/main/{FILE}?token={SECRET}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.read() == blob
        conn.close()
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert f"/{REPO}/resolve/main/{FILE}?<redacted>" in err  # one line per request
    assert "urllib3" in err  # -vv: debug lines of the pull-through too
    for secret in (SECRET, "X-Amz-Signature", *signatures(hub)):
        assert secret not in err
