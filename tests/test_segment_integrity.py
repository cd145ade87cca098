"""Parallel and resumed downloads never lose the part to a race, always finish, and never
store bytes from two versions of a file or an encoding nobody asked for."""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
import time
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import DownloadError, EnsureOptions, ModelSource, ProgressEvent, ensure
from modelfetch.cache.part import part_paths, save_part_state
from modelfetch.core.resume import PartState

from .conftest import sha256_of

MiB = 1024 * 1024
PATH = "/seg/model.gguf"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@pytest.fixture(scope="module")
def big() -> bytes:
    return random_bytes(40 * MiB, seed=31)


def requested(server: FaultServer) -> list[tuple[int, int] | None]:
    """Each GET's range as (first, last), or None for a whole-file request."""
    out: list[tuple[int, int] | None] = []
    for r in server.requests_for(PATH):
        m = _RANGE.match(r.headers.get("Range", ""))
        out.append((int(m.group(1)), int(m.group(2))) if m else None)
    return out


def wait_for(condition: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.01)
    raise AssertionError("timed out")


def write_part(
    cache_dir: Path, url: str, res: Resource, segments: list[tuple[int, int, int]]
) -> None:
    """A part and checkpoint as an interrupted parallel download leaves them: the claimed
    bytes are the origin's, the rest of the preallocated file is zeros."""
    src = ModelSource.parse(url)
    directory = cache_dir / "entries" / src.entry_dir_name
    directory.mkdir(parents=True)
    part, state_path = part_paths(directory, src.file_name)
    data = bytearray(len(res.data))
    for start, _, pos in segments:
        data[start:pos] = res.data[start:pos]
    part.write_bytes(bytes(data))
    state = PartState(src.cache_key, res.etag, res.last_modified, len(res.data), None)
    save_part_state(state_path, state.with_segments([list(s) for s in segments]))


def test_response_is_checked_against_the_range_it_asked_for(
    server: FaultServer, opts: EnsureOptions, big: bytes, cache_dir: Path
) -> None:
    """A segment's end moves (work stealing) while its request is in flight: the answer to
    the original request is still right, and the part is kept."""
    gate = threading.Event()
    res = Resource(big, headers_gate=gate, headers_gate_at=4 * MiB)
    url = server.add(PATH, res)
    near_done = 4 * MiB - 64 * 1024
    write_part(cache_dir, url, res, [(0, 4 * MiB, near_done), (4 * MiB, len(big), 4 * MiB)])
    events: list[ProgressEvent] = []
    result: list[str] = []
    worker = threading.Thread(
        target=lambda: result.append(
            ensure(url, opts, connections=2, progress=events.append).sha256
        )
    )
    worker.start()
    try:
        # The near-done segment finishes and its worker splits the gated one: wait for the
        # request of the split-off half, then let the gated answer go out.
        wait_for(lambda: any(r and r[0] > 4 * MiB for r in requested(server)))
    finally:
        gate.set()
        worker.join(timeout=60)
    assert result == [hashlib.sha256(big).hexdigest()]
    assert [e for e in events if e.kind == "restart"] == []
    asked = requested(server)
    assert None not in asked and min(r[0] for r in asked if r) == near_done  # nothing refetched


def test_resumed_parallel_download_with_take_overs_finishes(
    server: FaultServer,
    opts: EnsureOptions,
    big: bytes,
    cache_dir: Path,
) -> None:
    """Several open segments (unaligned positions), eight connections, a slow origin and a
    connection that stalls: the resume finishes, keeps the part and hashes in order."""
    segments = []
    for i in range(5):
        start, end = i * 8 * MiB, (i + 1) * 8 * MiB
        segments.append((start, end, start + MiB + 4097 * i))
    res = Resource(big, chunk=64 * 1024, delay_per_chunk=0.004, stall_range_at=segments[2][2])
    url = server.add(PATH, res)
    write_part(cache_dir, url, res, segments)
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, connections=8, progress=events.append, stall_seconds=0.5)
    assert entry.sha256 == hashlib.sha256(big).hexdigest() == sha256_of(entry.path)
    assert res.stalled  # the stalled connection was taken over
    assert [e.message for e in events if e.kind in ("restart", "retry")] == []
    assert None not in requested(server)


def test_resume_with_more_open_segments_than_buffers_finishes(
    server: FaultServer,
    opts: EnsureOptions,
    cache_dir: Path,
) -> None:
    data = random_bytes(16 * MiB, seed=32)
    segments = [(i * 2 * MiB, (i + 1) * 2 * MiB, i * 2 * MiB + MiB // 2) for i in range(8)]
    res = Resource(data, chunk=10_000, delay_per_chunk=0.01)
    url = server.add(PATH, res)
    write_part(cache_dir, url, res, segments)
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, connections=8, progress=events.append, stall_seconds=0.5)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
    assert [e.message for e in events if e.kind in ("restart", "retry")] == []


def whole_file_gets(server: FaultServer) -> list[int]:
    return [i for i, r in enumerate(requested(server)) if r is None]


def test_file_changed_mid_download_restarts_and_stays_parallel(
    server: FaultServer, opts: EnsureOptions, big: bytes
) -> None:
    """If-Range turns the segment requests into 200s of the new version: that means "the
    file changed", not "no ranges here". Start over, probing for ranges again."""
    new = big[::-1]
    res = Resource(big, change_after=1, next_data=new)
    url = server.add(PATH, res)
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, connections=4, parallel_below_mbps=None, progress=events.append)
    assert entry.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(entry.path)
    assert [e.message for e in events if e.kind == "restart"] == ["the file changed on the server"]
    restart_at = whole_file_gets(server)[1]
    after = server.requests_for(PATH)[restart_at + 1 :]
    assert len(after) == 3 and all(r.headers["If-Range"] == res.etag for r in after)


@pytest.mark.parametrize("proxy", ["206-without-etag", "206-with-new-etag"])
def test_file_changed_mid_download_is_never_spliced(
    proxy: str, server: FaultServer, opts: EnsureOptions, big: bytes
) -> None:
    """An origin (or proxy) that ignores If-Range serves ranges of the new version: a 206
    must carry the first answer's ETag, or its bytes are not joined to the others."""
    new = bytes(b ^ 0x5A for b in big)
    res = Resource(
        big,
        change_after=1,
        next_data=new,
        ignore_if_range=True,
        omit_etag_in_206=proxy == "206-without-etag",
    )
    url = server.add(PATH, res)
    entry = ensure(url, opts, connections=4, parallel_below_mbps=None)
    stored = sha256_of(entry.path)
    assert stored == entry.sha256 == hashlib.sha256(new).hexdigest()  # one whole version
    if proxy == "206-without-etag":  # such a server gets one stream: nothing to check ranges by
        assert requested(server)[-1] is None


def test_compressed_answer_is_never_stored(
    server: FaultServer, opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    url = server.add(PATH, Resource(gzip.compress(blob), headers={"Content-Encoding": "gzip"}))
    with pytest.raises(DownloadError, match="Content-Encoding: gzip"):
        ensure(url, opts)
    assert len(server.requests_for(PATH)) == 1  # a clear error, not retried
    assert [p.name for p in cache_dir.rglob("model.gguf*")] == []


def test_compressed_resume_answer_leaves_the_part_alone(
    server: FaultServer, opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    res = Resource(blob, drop_after=[1_000_000])
    url = server.add(PATH, res)
    with pytest.raises(DownloadError):
        ensure(url, opts, max_retries=0)
    src = ModelSource.parse(url)
    part, _ = part_paths(cache_dir / "entries" / src.entry_dir_name, src.file_name)
    before = part.read_bytes()
    res.headers = {"Content-Encoding": "gzip"}  # a proxy compressing on the fly
    with pytest.raises(DownloadError, match="Content-Encoding"):
        ensure(url, opts)
    assert part.read_bytes() == before and not (part.parent / src.file_name).exists()
    res.headers = {}
    assert ensure(url, opts).sha256 == hashlib.sha256(blob).hexdigest()
    assert server.requests_for(PATH)[-1].headers["Range"] == f"bytes=1000000-{len(blob) - 1}"
