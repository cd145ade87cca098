"""``modelfetch serve`` answers a cold file at once and streams it while it pulls it.

The upstream is the hub + CDN emulation. Its CDN can be paused short of a file's end
(``pause_after``): whatever a client receives meanwhile it received while the upstream
download was still running, which is how these tests tell streaming from waiting, without
any clock deciding pass or fail.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, git_blob_sha1
from modelfetch import ModelSource
from modelfetch.mirror import MirrorServer

REPO = "TheOrg/Stream-GGUF"
FILE = "stream-Q4_K_M.gguf"
PATH = f"/{REPO}/resolve/main/{FILE}"
SIZE = 8 * 1024 * 1024
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def model() -> bytes:
    return random_bytes(SIZE, seed=23)


@pytest.fixture
def commit(hub: HubEmulator, model: bytes) -> str:
    return hub.create_repo(REPO, {FILE: model})


@pytest.fixture
def mirror(tmp_path: Path, hub: HubEmulator, commit: str) -> Iterator[MirrorServer]:
    with MirrorServer(tmp_path / "mirror", upstream=hub.endpoint) as m:
        yield m


def connect(mirror: MirrorServer) -> http.client.HTTPConnection:
    return http.client.HTTPConnection(*mirror.server_address, timeout=60)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def read_fully(resp: http.client.HTTPResponse) -> tuple[bytes, bool]:
    """The rest of the body, and whether it all arrived (False: the server cut it short)."""
    pieces = []
    try:
        while piece := resp.read(256 * 1024):
            pieces.append(piece)
    except (http.client.IncompleteRead, ConnectionError, TimeoutError):
        return b"".join(pieces), False
    # read(n) returns b"" at a premature end instead of raising: what is left says it.
    return b"".join(pieces), not resp.length


def test_head_and_get_of_a_cold_file_are_answered_while_the_pull_runs(
    mirror: MirrorServer, hub: HubEmulator, commit: str, model: bytes
) -> None:
    sha = hashlib.sha256(model).hexdigest()
    hub.cdn.pause_after(SIZE - MIB)  # the upstream download cannot finish until resume()
    head = connect(mirror)
    head.request("HEAD", PATH)
    answer = head.getresponse()
    answer.read()
    assert answer.status == 200
    assert answer.headers["Content-Length"] == str(SIZE)
    assert answer.headers["X-Linked-Size"] == str(SIZE)
    assert answer.headers["X-Linked-Etag"] == answer.headers["ETag"] == f'"{sha}"'
    assert answer.headers["X-Repo-Commit"] == commit

    get = connect(mirror)
    get.request("GET", PATH)
    body = get.getresponse()
    assert body.status == 200 and body.headers["Content-Length"] == str(SIZE)
    first = body.read(MIB)  # arrives while the CDN holds back the file's last MiB
    assert first == model[:MIB]
    assert hub.cdn.body_bytes() < SIZE

    inside = connect(mirror)  # a range inside what has arrived: answered at once
    inside.request("GET", PATH, headers={"Range": "bytes=100-199"})
    part = inside.getresponse()
    assert part.status == 206 and part.read() == model[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{SIZE}"
    assert hub.cdn.body_bytes() < SIZE

    tail: dict[str, object] = {}

    def beyond() -> None:  # a range past what has arrived: waits for it
        conn = connect(mirror)
        conn.request("GET", PATH, headers={"Range": "bytes=-10"})
        resp = conn.getresponse()
        tail["status"], tail["data"] = resp.status, resp.read()

    waiter = threading.Thread(target=beyond)
    waiter.start()
    hub.cdn.resume()
    rest, complete = read_fully(body)
    waiter.join(timeout=60)
    assert complete and first + rest == model
    assert tail == {"status": 206, "data": model[-10:]}
    assert hub.cdn.body_bytes() == SIZE  # one pull for all of them
    entry = mirror.cache.get(ModelSource.huggingface(REPO, FILE))
    assert entry is not None and entry.sha256 == sha and entry.commit == commit


def test_a_git_stored_file_streams_under_its_git_blob_id(
    tmp_path: Path, hub: HubEmulator, model: bytes
) -> None:
    """A file kept in git (not LFS) is answered as the hub does, by its git blob id, known
    from the hub's description: so it streams too, and the finished entry says the same."""
    name = "notes.txt"
    commit = hub.create_repo(REPO, {name: model}, lfs=False)
    blob_id = git_blob_sha1(model)
    path = f"/{REPO}/resolve/main/{name}"
    hub.hub.pause_after(SIZE - MIB)  # git files come from the hub itself, not the CDN
    with MirrorServer(tmp_path / "m", upstream=hub.endpoint) as m:
        conn = connect(m)
        conn.request("GET", path)
        resp = conn.getresponse()
        assert resp.status == 200 and resp.headers["ETag"] == f'"{blob_id}"'
        assert resp.headers["X-Repo-Commit"] == commit and "X-Linked-Etag" not in resp.headers
        first = resp.read(MIB)
        assert first == model[:MIB] and hub.hub.body_bytes() < SIZE
        hub.hub.resume()
        rest, complete = read_fully(resp)
        assert complete and first + rest == model
        head = connect(m)  # now a cache hit, with the same identity
        head.request("HEAD", path)
        assert head.getresponse().headers["ETag"] == f'"{blob_id}"'


def test_a_client_pinning_the_commit_joins_the_running_pull(
    mirror: MirrorServer, hub: HubEmulator, commit: str, model: bytes
) -> None:
    """modelfetch resolves main with a HEAD, then asks for /resolve/<commit>/: that must be
    served by the pull already running for main, not a second download."""
    hub.cdn.pause_after(SIZE - MIB)
    head = connect(mirror)
    head.request("HEAD", PATH)
    assert head.getresponse().headers["X-Repo-Commit"] == commit
    pinned = connect(mirror)
    pinned.request("GET", f"/{REPO}/resolve/{commit}/{FILE}")
    resp = pinned.getresponse()
    assert resp.status == 200 and resp.read(MIB) == model[:MIB]
    hub.cdn.resume()
    rest, complete = read_fully(resp)
    assert complete and rest == model[MIB:]
    assert hub.cdn.body_bytes() == SIZE
    assert len(hub.cdn.requests("GET")) >= 1 and len(hub.hub.requests("HEAD")) == 1


def test_a_wait_that_sees_no_progress_ends_in_an_error_not_a_hang(
    tmp_path: Path, hub: HubEmulator, commit: str, model: bytes
) -> None:
    hub.cdn.pause_after(SIZE // 2)
    with MirrorServer(tmp_path / "m", upstream=hub.endpoint, io_timeout=1.0) as m:
        conn = connect(m)
        conn.request("GET", PATH, headers={"Range": f"bytes={SIZE - 100}-"})
        resp = conn.getresponse()
        assert resp.status == 206
        data, complete = read_fully(resp)  # the upstream is stuck: the mirror gives up
        assert not complete and data == b""
        hub.cdn.resume()
        again = connect(m)  # the pull itself carries on, and later clients get the file
        again.request("GET", PATH, headers={"Range": f"bytes={SIZE - 100}-"})
        assert again.getresponse().read() == model[-100:]


def test_a_file_failing_verification_is_never_sent_whole(
    mirror: MirrorServer, hub: HubEmulator, commit: str, model: bytes
) -> None:
    """The CDN sends other bytes than the hub's SHA-256 names: clients streaming it are cut
    before the last byte, and nothing is cached."""
    sha = hashlib.sha256(model).hexdigest()
    hub.tampered[sha] = model[:-1] + bytes([model[-1] ^ 0xFF])
    hub.cdn.pause_after(SIZE - MIB)
    streaming = connect(mirror)
    streaming.request("GET", PATH)
    resp = streaming.getresponse()
    assert resp.status == 200 and resp.read(MIB) == model[:MIB]
    waiting = connect(mirror)
    waiting.request("GET", PATH, headers={"Range": "bytes=-1"})
    tail = waiting.getresponse()
    hub.cdn.resume()
    rest, complete = read_fully(resp)
    assert not complete and len(rest) < SIZE - MIB
    assert read_fully(tail) == (b"", False)
    assert mirror.cache.get(ModelSource.huggingface(REPO, FILE)) is None
    # A later request starts a new pull, which fails the same way: never a whole body.
    later = connect(mirror)
    later.request("GET", PATH)
    body, complete = read_fully(later.getresponse())
    assert not complete and len(body) < SIZE


def test_bytes_sent_from_an_abandoned_pass_cut_the_stream(
    mirror: MirrorServer, hub: HubEmulator, commit: str, model: bytes
) -> None:
    """The CDN drops the connection mid-file: the pull retries and hashes its part again
    from the start (a new pass). A client that already got bytes is cut (it resumes with a
    Range, as huggingface_hub does); one that got none is served the whole file."""
    hub.cdn.faults.drop_after.append(SIZE - MIB)
    hub.cdn.pause_after(SIZE - 2 * MIB)
    early = connect(mirror)
    early.request("GET", PATH)
    resp = early.getresponse()
    got = resp.read(MIB)
    assert got == model[:MIB]
    hub.cdn.resume()
    rest, complete = read_fully(resp)
    sent = got + rest
    assert not complete and sent == model[: len(sent)]
    resume = connect(mirror)
    resume.request("GET", PATH, headers={"Range": f"bytes={len(sent)}-"})
    assert sent + resume.getresponse().read() == model
    late = connect(mirror)
    late.request("GET", PATH)
    assert read_fully(late.getresponse()) == (model, True)
    assert len(hub.cdn.requests("GET")) >= 2  # the drop did happen: a retry followed


def test_max_bytes_evicts_the_least_recently_used_entry_nobody_reads(
    tmp_path: Path, hub: HubEmulator
) -> None:
    size = 12 * MIB
    files = {f"f{i}.gguf": random_bytes(size, seed=40 + i) for i in range(4)}
    hub.create_repo(REPO, files)
    with MirrorServer(tmp_path / "m", upstream=hub.endpoint, max_bytes=2 * size + MIB) as m:

        def fetch(name: str) -> bytes:
            conn = connect(m)
            conn.request("GET", f"/{REPO}/resolve/main/{name}")
            return conn.getresponse().read()

        def cached() -> set[str]:
            return {e.source.rsplit("/", 1)[-1] for e in m.cache.list()}

        assert fetch("f0.gguf") == files["f0.gguf"]
        # A slow reader holds f0 open (a tiny receive window keeps the send going).
        reader = socket.socket()
        reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        reader.settimeout(30)
        reader.connect(m.server_address)
        reader.sendall(f"GET /{REPO}/resolve/main/f0.gguf HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        assert reader.recv(1024).startswith(b"HTTP/1.1 200")
        try:
            assert fetch("f1.gguf") == files["f1.gguf"]  # now f0 is the least recently used
            assert cached() == {"f0.gguf", "f1.gguf"}
            # f2 needs room: f0 is the least recently used, but it is being read; f1 goes
            # (right after the pull, which may be just after f2's last byte went out).
            assert fetch("f2.gguf") == files["f2.gguf"]
            wait_for(lambda: cached() == {"f0.gguf", "f2.gguf"}, "f1 to be evicted")
        finally:
            reader.close()
        wait_for(lambda: not m._readers, "the mirror to notice the reader left")
        assert fetch("f3.gguf") == files["f3.gguf"]  # now f0 (least recently used) goes
        wait_for(lambda: cached() == {"f2.gguf", "f3.gguf"}, "f0 to be evicted")
        assert fetch("f0.gguf") == files["f0.gguf"]  # an evicted file is simply pulled again
    assert hub.cdn.body_bytes() == 5 * size


def test_serve_rejects_a_bad_max_bytes_in_one_line(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(tmp_path / "c"), "serve",
         "--port", "0", "--max-bytes", "lots"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "'lots' is not a size" in proc.stderr and "Traceback" not in proc.stderr


# -- the proof: 8 real huggingface_hub clients through one cold mirror ---------------------
CLIENTS = 8
BIG = 32 * MIB
ROOT = Path(__file__).resolve().parents[1]


class Client:
    """One huggingface_hub process (devtools/hf_client.py); records the CDN's body bytes
    when the client's first bytes came."""

    def __init__(self, home: Path, endpoint: str, hub: HubEmulator) -> None:
        env = {
            **os.environ,
            "HF_ENDPOINT": endpoint,
            "HF_HOME": str(home),
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_XET": "1",
        }
        env.pop("HF_TOKEN", None)
        self.hub = hub
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.hf_client", REPO, FILE, str(home / "hub")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env, cwd=ROOT,
        )  # fmt: skip
        self.ready = threading.Event()
        self.origin_at_first: int | None = None
        self.path: Path | None = None
        self.stderr: list[str] = []
        self._readers = [
            threading.Thread(target=self._read, daemon=True),
            threading.Thread(target=self._drain, daemon=True),
        ]
        for t in self._readers:
            t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                self.ready.set()
            elif word == "first-bytes":
                self.origin_at_first = self.hub.cdn.body_bytes()
            elif word == "path":
                self.path = Path(rest)

    def _drain(self) -> None:
        assert self.proc.stderr is not None
        self.stderr.extend(self.proc.stderr)

    def go(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def finish(self) -> str:
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
        for t in self._readers:
            t.join(timeout=10)
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        return "".join(self.stderr)


def test_eight_huggingface_hub_clients_stream_one_cold_pull(
    tmp_path: Path, hub: HubEmulator, caplog: pytest.LogCaptureFixture
) -> None:
    model = random_bytes(BIG, seed=29)
    hub.create_repo(REPO, {FILE: model})
    hub.cdn.rate = 4e6  # bytes/s per connection: a slow CDN
    # The upstream download cannot end until every client has had its first bytes.
    hub.cdn.pause_after(BIG - MIB)
    caplog.set_level(logging.INFO, logger="modelfetch.mirror")
    with MirrorServer(tmp_path / "mirror", upstream=hub.endpoint) as m:
        clients = [Client(tmp_path / f"client{i}", m.url, hub) for i in range(CLIENTS)]
        try:
            for c in clients:
                assert c.ready.wait(120), c.proc.stderr.read() if c.proc.stderr else ""
            for c in clients:
                c.go()
            wait_for(
                lambda: all(c.origin_at_first is not None for c in clients),
                "every client's first bytes while the upstream download runs",
            )
        finally:
            hub.cdn.resume()
            errors = [c.finish() for c in clients]
    for c, err in zip(clients, errors, strict=True):
        assert c.proc.returncode == 0, err[-3000:]
        assert c.path is not None and c.path.read_bytes() == model
        # Its first bytes came while the upstream had not sent the whole file yet.
        assert c.origin_at_first is not None and c.origin_at_first < BIG
    # One download for all eight: 1.0x. (A parallel download cuts its first stream where
    # that stream's segment ends; the CDN counts the piece or two it had already written
    # into the socket, so a few 64 KiB may show on top of the file's size.)
    assert BIG <= hub.cdn.body_bytes() <= BIG * 1.01
    # Each client asked once: its HEAD was answered in time (huggingface_hub asks again,
    # with a longer timeout, when the first one times out) and so was its GET.
    requests = [r.getMessage() for r in caplog.records if f"{PATH}" in r.getMessage()]
    assert sum('"HEAD ' in line for line in requests) == CLIENTS
    assert sum('"GET ' in line for line in requests) == CLIENTS
