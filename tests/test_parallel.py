"""Segmented multi-connection downloads: splitting, fallbacks, resume of segments, stalls."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.nginx import Nginx
from modelfetch import DownloadError, EnsureOptions, ModelSource, ProgressEvent, ensure
from modelfetch.cache.part import load_part_state
from modelfetch.core.segments import MAX_PIECE

from .conftest import sha256_of

MiB = 1024 * 1024
PATH = "/big/model.gguf"
_RANGE = re.compile(r"bytes=(\d+)-(\d+)")


@pytest.fixture(scope="module")
def big() -> bytes:
    return random_bytes(40 * MiB, seed=21)


@pytest.fixture(scope="module")
def big_sha(big: bytes) -> str:
    return hashlib.sha256(big).hexdigest()


def range_starts(server: FaultServer) -> list[int]:
    out = []
    for r in server.requests_for(PATH):
        m = _RANGE.match(r.headers.get("Range", ""))
        if m:
            out.append(int(m.group(1)))
    return out


def test_parallel_download_splits_into_ranges(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    res = Resource(big)
    url = server.add(PATH, res)
    entry = ensure(url, opts, connections=4, parallel_below_mbps=None)
    assert entry.sha256 == big_sha == sha256_of(entry.path)
    reqs = server.requests_for(PATH)
    assert "Range" not in reqs[0].headers  # the first response streams segment 0
    assert sorted(range_starts(server)) == [10 * MiB, 20 * MiB, 30 * MiB]
    assert all(r.headers.get("If-Range") == res.etag for r in reqs[1:])


def test_server_without_ranges_gets_one_stream(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    url = server.add(PATH, Resource(big, accept_ranges=False))
    assert ensure(url, opts).sha256 == big_sha
    assert len(server.requests_for(PATH)) == 1


def test_no_validator_means_one_stream_unless_sha_is_pinned(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    url = server.add(PATH, Resource(big, etag="", last_modified=""))
    assert ensure(url, opts, connections=4).sha256 == big_sha
    assert len(server.requests_for(PATH)) == 1
    pinned = ensure(
        url, opts, connections=4, sha256=big_sha, policy="refresh", parallel_below_mbps=None
    )
    assert pinned.sha256 == big_sha
    assert len(range_starts(server)) == 3  # with a pinned hash, pieces can be checked


def test_advertised_but_ignored_ranges_fall_back_to_one_stream(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    url = server.add(PATH, Resource(big, ignore_range=True))
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, connections=4, progress=events.append, parallel_below_mbps=None)
    assert entry.sha256 == big_sha == sha256_of(entry.path)
    assert "restart" in [e.kind for e in events]
    assert "Range" not in server.requests_for(PATH)[-1].headers


def test_segments_resume_after_a_failed_attempt(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    res = Resource(big, drop_after=[3 * MiB])  # the first connection dies early
    url = server.add(PATH, res)
    with pytest.raises(DownloadError):
        ensure(url, opts, connections=4, max_retries=0, parallel_below_mbps=None)
    first_round = len(server.requests_for(PATH))
    entry = ensure(url, opts, connections=4)
    assert entry.sha256 == big_sha == sha256_of(entry.path)
    resumed = server.requests_for(PATH)[first_round:]
    asked = 0
    for r in resumed:
        m = _RANGE.match(r.headers["Range"])  # every resumed request is a range
        assert m is not None and r.headers["If-Range"] == res.etag
        asked += int(m.group(2)) - int(m.group(1)) + 1
    assert 0 < asked < len(big)  # only what was missing was fetched again
    assert min(int(_RANGE.match(r.headers["Range"]).group(1)) for r in resumed) >= 3 * MiB  # type: ignore[union-attr]


def test_stalled_connection_is_taken_over(
    server: FaultServer,
    opts: EnsureOptions,
    big: bytes,
    big_sha: str,
) -> None:
    res = Resource(big, stall_range_at=20 * MiB)
    url = server.add(PATH, res)
    entry = ensure(
        url, opts, connections=4, read_timeout=60, parallel_below_mbps=None, stall_seconds=0.5
    )
    assert entry.sha256 == big_sha == sha256_of(entry.path)
    assert res.stalled
    assert range_starts(server).count(20 * MiB) == 2  # asked again by an idle worker


def test_parallel_against_nginx(nginx: Nginx, nginx_root: Path, opts: EnsureOptions) -> None:
    data = random_bytes(48 * MiB, seed=22)
    (nginx_root / "par").mkdir(exist_ok=True)
    (nginx_root / "par" / "model.gguf").write_bytes(data)
    entry = ensure(nginx.url("par/model.gguf"), opts, connections=6, parallel_below_mbps=None)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
    log = (nginx.prefix / "access.log").read_text().splitlines()
    partial = [line for line in log if "/par/model.gguf" in line and '" 206 ' in line]
    assert len(partial) == 5  # six segments: the first over the plain GET, five ranges


def test_fast_single_stream_stays_single(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    url = server.add(PATH, Resource(big))
    # A threshold no stream can be under: one connection is enough.
    assert ensure(url, opts, connections=4, parallel_below_mbps=0.0).sha256 == big_sha
    assert len(server.requests_for(PATH)) == 1


def test_slow_single_stream_ramps_up_to_more_connections(
    server: FaultServer, opts: EnsureOptions, big: bytes, big_sha: str
) -> None:
    # ~6 MB/s per connection: far below the threshold, so the remainder is split up.
    url = server.add(PATH, Resource(big, chunk=64 * 1024, delay_per_chunk=0.01))
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, connections=4, parallel_below_mbps=300.0, progress=events.append)
    assert entry.sha256 == big_sha == sha256_of(entry.path)
    assert "Range" not in server.requests_for(PATH)[0].headers
    starts = range_starts(server)
    assert 1 <= len(starts) <= 3 and all(s % MiB == 0 for s in starts)


def asked_ranges(server: FaultServer) -> list[tuple[int, int]]:
    """[start, end) of every range request, in the order they arrived."""
    out = []
    for r in server.requests_for(PATH):
        m = _RANGE.match(r.headers.get("Range", ""))
        if m:
            out.append((int(m.group(1)), int(m.group(2)) + 1))
    return out


def test_a_large_file_goes_in_pieces_lowest_first(server: FaultServer, opts: EnsureOptions) -> None:
    """Bytes ahead of the hash frontier stay within about connections x MAX_PIECE: each
    connection takes the lowest piece nobody has, so SHA-256 keeps up with the download.
    (One long range per connection left all but the first one's share to be hashed after
    the last byte had arrived.)"""
    data = random_bytes(4 * MAX_PIECE, seed=23)
    url = server.add(PATH, Resource(data))
    entry = ensure(url, opts, connections=2, parallel_below_mbps=None)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
    assert "Range" not in server.requests_for(PATH)[0].headers  # the first piece, plain GET
    asked = asked_ranges(server)
    assert {MAX_PIECE, 2 * MAX_PIECE, 3 * MAX_PIECE} <= {start for start, _ in asked}
    assert all(end - start <= MAX_PIECE for start, end in asked)  # (a split halves one)


def test_next_piece_is_asked_for_before_the_current_one_ends(
    server: FaultServer, opts: EnsureOptions
) -> None:
    """A far origin (every answer 0.3 s late): a worker sends its next piece's request about
    one such wait before its current piece ends, so the wait is not paid between pieces."""
    data = random_bytes(4 * MAX_PIECE, seed=24)
    # About 25 MB/s per connection: a piece takes 0.6 s to arrive.
    res = Resource(data, header_delay=0.3, chunk=256 * 1024, delay_per_chunk=0.01)
    url = server.add(PATH, res)
    entry = ensure(url, opts, connections=2, parallel_below_mbps=None)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
    assert {start for start, _ in asked_ranges(server)} >= {MAX_PIECE, 3 * MAX_PIECE}
    # The second piece's worker asked for the fourth piece before the second one's last
    # bytes had been sent (waiting for them first puts the request after "last").
    timeline = [(what, start) for what, path, start in server.timeline if path == PATH]
    assert timeline.index(("request", 3 * MAX_PIECE)) < timeline.index(("last", MAX_PIECE))


def test_checkpoint_of_many_pieces_lists_only_unfinished_ones(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    """Finished pieces are folded into the next one, so a checkpoint stays short (and under
    the 4096 segments a checkpoint may hold) however large the file."""
    data = random_bytes(6 * MAX_PIECE, seed=25)
    res = Resource(data, drop_after=[len(data)] * 4 + [MiB])  # the fifth request breaks
    url = server.add(PATH, res)
    with pytest.raises(DownloadError):
        ensure(url, opts, connections=2, max_retries=0, parallel_below_mbps=None)
    src = ModelSource.parse(url)
    state_path = cache_dir / "entries" / src.entry_dir_name / (src.file_name + ".part.json")
    state = load_part_state(state_path, src.cache_key)
    assert state is not None
    segments = state.segment_list()
    assert segments[0].pos >= 3 * MAX_PIECE  # three pieces were finished, then folded
    assert all(not s.done for s in segments[:-1]) and len(segments) <= 4
    entry = ensure(url, opts, connections=2)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
