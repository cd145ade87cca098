"""Segmented multi-connection downloads: splitting, fallbacks, resume of segments, stalls."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.nginx import Nginx
from modelfetch import DownloadError, EnsureOptions, ProgressEvent, ensure

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
