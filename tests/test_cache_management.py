"""list/get/remove/clear/prune/verify, and the policies, on a real cache directory."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import Cache, CacheMissError, EnsureOptions, ModelSource, ensure
from modelfetch.errors import CorruptCacheError

from .conftest import sha256_of


def _fill(server: FaultServer, opts: EnsureOptions, n: int, size: int = 100_000) -> list[str]:
    urls = []
    for i in range(n):
        data = hashlib.sha256(str(i).encode()).digest() * (size // 32)
        urls.append(server.add(f"/m/{i}.gguf", Resource(data)))
        ensure(urls[-1], opts)
    return urls


def test_list_get_skip_corrupt_entries(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    urls = _fill(server, opts, 3)
    cache = Cache(cache_dir)
    assert len(cache.list()) == 3
    broken = cache.entry_dir(ModelSource.parse(urls[1]))
    (broken / "metadata.json").write_bytes(b"{not json")
    listed = cache.list()
    assert len(listed) == 2 and broken not in [e.directory for e in listed]
    # get() repairs it (offline) rather than failing
    assert cache.get(urls[1]) is not None
    assert len(cache.list()) == 3
    assert cache.get("http://127.0.0.1:1/never.gguf") is None


def test_find_by_key_prefix_source_and_dir(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    (url,) = _fill(server, opts, 1)
    cache = Cache(cache_dir)
    entry = cache.list()[0]
    assert cache.find(entry.cache_key[:8]) == [entry]
    assert cache.find(url) == [entry]
    assert cache.find(entry.directory.name) == [entry]


def test_remove_and_clear_touch_only_our_entries(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path, tmp_path: Path
) -> None:
    urls = _fill(server, opts, 3)
    cache = Cache(cache_dir)
    foreign_root = cache_dir / "my-notes.txt"
    foreign_root.write_text("keep me")
    foreign_entries = cache_dir / "entries" / "README"
    foreign_entries.write_text("keep me too")
    foreign_dir = cache_dir / "entries" / "not-our-pattern"
    foreign_dir.mkdir()
    (foreign_dir / "x").write_text("mine")
    outside = tmp_path / "outside.bin"
    outside.write_text("precious")
    victim = cache.entry_dir(ModelSource.parse(urls[0]))
    (victim / "link").symlink_to(outside)

    removed = cache.remove(urls[0])
    assert len(removed) == 1 and not victim.exists()
    assert outside.read_text() == "precious"
    removed_count, busy = cache.clear()
    assert (removed_count, busy) == (2, 0)
    assert cache.list() == []
    assert foreign_root.read_text() == "keep me"
    assert foreign_entries.read_text() == "keep me too"
    assert (foreign_dir / "x").read_text() == "mine"


def test_symlinked_layout_dir_is_refused(tmp_path: Path, opts: EnsureOptions) -> None:
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (root / "entries").symlink_to(elsewhere)
    with pytest.raises(CorruptCacheError, match="entries is a symbolic link"):
        Cache(root).prepare()
    with pytest.raises(CorruptCacheError, match="unsafe"):
        Cache(root).list()  # refused too, rather than followed or silently empty
    assert list(elsewhere.iterdir()) == []


def test_prune_by_age_and_bytes_lru(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    urls = _fill(server, opts, 4, size=100_000)
    cache = Cache(cache_dir)
    now = time.time()
    # entry i was last used i days ago
    for i, url in enumerate(urls):
        d = cache.entry_dir(ModelSource.parse(url))
        os.utime(d, (now - i * 86400, now - i * 86400))
    report = cache.prune(max_age=2.5 * 86400, now=now)
    assert {e.source for e in report.removed} == {ModelSource.parse(urls[3]).display}
    report = cache.prune(max_bytes=150_000, now=now)  # keeps only the most recently used
    assert len(report.removed) == 2
    left = cache.list()
    assert [e.source for e in left] == [ModelSource.parse(urls[0]).display]
    assert report.freed_bytes == sum(e.bytes for e in report.removed)


def test_prune_by_bytes_skips_entries_in_use(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    """The mirror's --max-bytes: what ``keep`` says is in use stays, the next LRU goes."""
    urls = _fill(server, opts, 3, size=100_000)
    cache = Cache(cache_dir)
    now = time.time()
    for i, url in enumerate(urls):  # entry i was last used i hours ago
        d = cache.entry_dir(ModelSource.parse(url))
        os.utime(d, (now - i * 3600, now - i * 3600))
    oldest = ModelSource.parse(urls[2]).display
    report = cache.prune(max_bytes=200_000, keep=lambda e: e.source == oldest)
    assert [e.source for e in report.removed] == [ModelSource.parse(urls[1]).display]
    assert report.busy_skipped == 1
    assert {e.source for e in cache.list()} == {oldest, ModelSource.parse(urls[0]).display}


def test_prune_dry_run_removes_nothing(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    _fill(server, opts, 2)
    report = Cache(cache_dir).prune(max_bytes=0, dry_run=True)
    assert len(report.removed) == 2 and len(Cache(cache_dir).list()) == 2


def test_prune_removes_dead_parts_but_not_live_ones(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path, blob: bytes
) -> None:
    dead = server.add("/dead.gguf", Resource(blob, drop_after=[500_000]))
    with pytest.raises(Exception):
        ensure(dead, opts, max_retries=0)
    dead_dir = Cache(cache_dir).entry_dir(ModelSource.parse(dead))
    assert (dead_dir / "dead.gguf.part").exists()

    gate = threading.Event()
    live = server.add("/live.gguf", Resource(blob, gate=gate))
    live_part = Cache(cache_dir).entry_dir(ModelSource.parse(live)) / "live.gguf.part"
    t = threading.Thread(target=ensure, args=(live, opts))
    t.start()
    try:
        deadline = time.monotonic() + 20
        while not live_part.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        report = Cache(cache_dir).prune()
        assert report.parts_removed == 1
        assert not dead_dir.exists()  # the dead download's directory is gone entirely
        assert live_part.exists()
    finally:
        gate.set()
        t.join(timeout=60)


def test_verify_detects_and_removes_corruption(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    urls = _fill(server, opts, 2)
    cache = Cache(cache_dir)
    bad = cache.entry_dir(ModelSource.parse(urls[0]))
    model = bad / "0.gguf"
    with open(model, "r+b") as fh:
        fh.write(b"\x00\x00\x00")
    results = {r.directory: r for r in cache.verify()}
    assert results[bad].ok is False and "mismatch" in results[bad].detail
    assert not model.exists()
    assert sum(r.ok for r in results.values()) == 1


# -- policies -------------------------------------------------------------------------------
def test_refresh_replaces_changed_file_atomically(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    res = Resource(blob)
    url = server.add("/r.gguf", res)
    first = ensure(url, opts)
    with open(first.path, "rb") as held:  # a reader holding the old file keeps its bytes
        new = blob[::-1]
        res.replace_data(new)
        assert ensure(url, opts).sha256 == first.sha256  # prefer_cached: no revalidation
        refreshed = ensure(url, opts, policy="refresh")
        assert refreshed.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(refreshed.path)
        assert refreshed.path == first.path
        assert hashlib.sha256(held.read()).hexdigest() == first.sha256
    sent = server.requests_for("/r.gguf")[-1].headers
    assert sent["If-None-Match"] == '"' + hashlib.sha256(blob).hexdigest()[:20] + '"'


def test_refresh_unchanged_is_a_304(server: FaultServer, opts: EnsureOptions, blob: bytes) -> None:
    url = server.add("/r.gguf", Resource(blob))
    first = ensure(url, opts)
    again = ensure(url, opts, policy="refresh")
    assert again.path == first.path and again.sha256 == first.sha256
    assert len(server.requests_for("/r.gguf")) == 2


def test_no_cache_makes_transient_entries(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path, blob: bytes, blob_sha: str
) -> None:
    url = server.add("/n.gguf", Resource(blob))
    a = ensure(url, opts, policy="no_cache")
    b = ensure(url, opts, policy="no_cache")
    assert a.transient and b.transient and a.path != b.path
    assert len(server.requests_for("/n.gguf")) == 2
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")  # transient entries never serve hits
    cache = Cache(cache_dir)
    assert sorted(e.path for e in cache.list()) == sorted([a.path, b.path])
    assert all(sha256_of(e.path) == blob_sha for e in cache.list())
    assert len(cache.remove(a.cache_key)) == 2
    assert cache.list() == []
