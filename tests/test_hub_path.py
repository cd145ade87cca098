"""The real Hugging Face path (issue 8, section 1), against the hub + CDN emulation:

* a presigned CDN link that expired (401/403/410) during the first request, a segment, a
  retry or a resume sends us back to the hub for a fresh one, and never fails the download;
* a revision is resolved to a commit once, and every later request of that download
  (segments, retries, resumes, the other shards, the quant listing) asks for that commit;
* git-stored files come through the relative 307 and are checked against their git blob id;
* If-Range towards the CDN carries the CDN's own ETag, never the hub's SHA-256.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path

import pytest

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, LoggedRequest
from modelfetch import (
    Cache,
    CancelledError,
    CancelToken,
    DownloadError,
    EnsureOptions,
    IntegrityError,
    ProgressEvent,
    ensure,
)

from .conftest import sha256_of

MiB = 1024 * 1024
REPO = "TheOrg/Big-GGUF"
NAME = "big-Q4_K_M.gguf"
SOURCE = f"hf://{REPO}/{NAME}"


@pytest.fixture(scope="module")
def big() -> bytes:
    return random_bytes(32 * MiB, seed=81)


@pytest.fixture(scope="module")
def big_v2(big: bytes) -> bytes:
    """Another version of the same file, same size."""
    return big[16:] + big[:16]


def expire_links_at(hub: HubEmulator, nth_get: int) -> None:
    """Let every link handed out so far expire just as the CDN's ``nth_get`` GET arrives."""
    seen = itertools.count(1)

    def hook(req: LoggedRequest) -> None:
        if req.method == "GET" and next(seen) == nth_get:
            hub.advance_clock(hub.url_lifetime + 1)

    hub.cdn.on_request = hook


def cdn_etag(data: bytes) -> str:
    return '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'


def resolve_gets(hub: HubEmulator) -> list[str]:
    return [r.path for r in hub.hub.requests("GET", "/resolve/")]


# -- expired links ----------------------------------------------------------------------------
@pytest.mark.parametrize("status", [401, 403, 410])
def test_a_link_refused_at_the_first_request_is_replaced_by_a_fresh_one(
    hub: HubEmulator, hub_opts: EnsureOptions, blob: bytes, blob_sha: str, status: int
) -> None:
    hub.expired_status = status
    hub.token = "hf_secret"
    hub.create_repo(REPO, {NAME: blob})
    expire_links_at(hub, 1)
    entry = ensure(SOURCE, hub_opts, bearer_token="hf_secret")
    assert entry.sha256 == blob_sha == sha256_of(entry.path)
    assert [r.status for r in hub.cdn.requests("GET")] == [status, 200]
    assert len(resolve_gets(hub)) == 2  # the first link, then a fresh one
    assert not any(r.header("Authorization") for r in hub.cdn.log)


@pytest.mark.parametrize("adaptive", [False, True])
def test_parallel_segments_outlive_their_link(
    hub: HubEmulator, hub_opts: EnsureOptions, big: bytes, adaptive: bool
) -> None:
    """The link expires as the second connection opens (from the start, or when the
    slow first stream makes modelfetch add connections): segments go back to the hub."""
    hub.create_repo(REPO, {NAME: big})
    if adaptive:
        hub.cdn.rate = 16e6  # per connection, like a CDN: one stream is slow
    expire_links_at(hub, 2)
    events: list[ProgressEvent] = []
    entry = ensure(
        SOURCE,
        hub_opts,
        connections=4,
        parallel_below_mbps=150.0 if adaptive else None,
        progress=events.append,
    )
    assert entry.sha256 == hashlib.sha256(big).hexdigest() == sha256_of(entry.path)
    gets = hub.cdn.requests("GET")
    assert 403 in [r.status for r in gets]
    ranged = [r for r in gets if r.header("Range")]
    assert len(ranged) >= 2 and all(r.status in (206, 403) for r in ranged)
    assert "restart" not in [e.kind for e in events]  # no byte was thrown away
    assert len(resolve_gets(hub)) == 2  # one fresh link, shared by the segments


def test_a_download_that_outlives_a_one_second_link_with_a_retry(
    hub: HubEmulator, opts: EnsureOptions, big: bytes
) -> None:
    """A one-second link, a CDN at 4 MB/s per connection, and a connection that breaks
    after 2.5 s: the retry finds the link expired and gets a fresh one from the hub."""
    with HubEmulator(url_lifetime=1) as short:
        short.create_repo(REPO, {NAME: big[: 20 * MiB]})
        short.cdn.rate = 4e6
        short.cdn.faults.drop_after.append(10_000_000)  # 2.5 s into the first response
        entry = ensure(
            SOURCE, opts, hf_endpoint=short.endpoint, connections=2, parallel_below_mbps=None
        )
        assert entry.path.read_bytes() == big[: 20 * MiB]
        statuses = [r.status for r in short.cdn.requests("GET")]
        assert statuses.count(403) >= 1 and statuses[-1] == 206


def test_resume_in_a_later_call_after_the_link_expired(
    hub: HubEmulator, hub_opts: EnsureOptions, big: bytes
) -> None:
    hub.create_repo(REPO, {NAME: big})
    hub.cdn.rate = 16e6  # per connection: the cancel lands long before the end
    token = CancelToken()

    def cancel_half_way(ev: ProgressEvent) -> None:
        if ev.kind == "progress" and ev.bytes_done > 4 * MiB:
            token.cancel()

    with pytest.raises(CancelledError):
        ensure(SOURCE, hub_opts, connections=2, parallel_below_mbps=None,
               cancel=token, progress=cancel_half_way)  # fmt: skip
    hub.advance_clock(7200)  # an hour later: every link handed out so far is dead
    hub.cdn.rate = None
    before = len(hub.cdn.log)
    events: list[ProgressEvent] = []
    entry = ensure(SOURCE, hub_opts, connections=2, parallel_below_mbps=None,
                   progress=events.append)  # fmt: skip
    assert entry.path.read_bytes() == big
    start = next(e for e in events if e.kind == "start")
    assert start.bytes_done > 0  # resumed, not restarted
    later = hub.cdn.log[before:]
    assert later and all(r.status == 206 for r in later)


def test_a_cdn_that_refuses_fresh_links_too_fails_without_blaming_the_token(
    hub: HubEmulator, hub_opts: EnsureOptions, blob: bytes
) -> None:
    hub.create_repo(REPO, {NAME: blob})
    hub.cdn.faults.fail(403, times=1000)
    with pytest.raises(DownloadError) as info:
        ensure(SOURCE, hub_opts, bearer_token="hf_secret")
    message = str(info.value)
    assert "refused the download link" in message and "token" not in message
    assert "X-Amz" not in message  # the signed link is redacted
    assert len(hub.cdn.log) == 2  # the link, and one fresh link: bounded


# -- one commit per download ----------------------------------------------------------------------
@pytest.mark.parametrize("connections", [1, 2])
def test_a_branch_moving_mid_download_never_mixes_versions(
    hub: HubEmulator, hub_opts: EnsureOptions, big: bytes, big_v2: bytes, connections: int
) -> None:
    first = hub.create_repo(REPO, {NAME: big})
    gets = itertools.count(1)

    def move_the_branch_then_expire_the_links(req: LoggedRequest) -> None:
        n = next(gets) if req.method == "GET" else 0
        if n == 1:  # the body starts: main moves on
            hub.push(REPO, {NAME: big_v2})
        if n == 3:  # the retry's link has expired: it has to ask the hub again
            hub.advance_clock(hub.url_lifetime + 1)

    hub.cdn.on_request = move_the_branch_then_expire_the_links
    hub.cdn.faults.drop_after.append(1_000_000)  # the first response breaks: a retry
    entry = ensure(SOURCE, hub_opts, connections=connections, parallel_below_mbps=None)
    assert hub.resolve(REPO, "main") != hub.resolve(REPO, first)
    assert entry.path.read_bytes() == big and entry.commit == first
    meta = json.loads((entry.directory / "metadata.json").read_text())
    assert meta["commit"] == first
    # after the first HEAD at main, every hub request named the commit
    assert all(f"/resolve/{first}/" in p for p in resolve_gets(hub))


def test_every_shard_comes_from_the_commit_of_the_first(
    hub: HubEmulator, hub_opts: EnsureOptions
) -> None:
    names = [f"q4/model-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    old = {n: random_bytes(300_000 + i, seed=60 + i) for i, n in enumerate(names)}
    first = hub.create_repo(REPO, old)

    def push_during_the_first_shard(req: LoggedRequest) -> None:
        if req.method == "GET" and hub.resolve(REPO, "main") == hub.resolve(REPO, first):
            hub.push(REPO, {n: data[::-1] for n, data in old.items()})

    hub.cdn.on_request = push_during_the_first_shard
    entry = ensure(f"hf://{REPO}/{names[0]}", hub_opts)
    assert entry.set_path is not None
    got = [p.read_bytes() for p in sorted(entry.set_path.parent.iterdir())]
    assert got == [old[n] for n in names]
    heads = [r.path for r in hub.hub.requests("HEAD", "/resolve/")]
    assert heads[0].startswith(f"/{REPO}/resolve/main/")
    assert all(f"/resolve/{first}/" in p for p in heads[1:]) and len(heads) == 3


def test_a_quant_tag_is_listed_and_downloaded_at_one_commit(
    hub: HubEmulator, hub_opts: EnsureOptions
) -> None:
    hub.page_size = 1
    files = {
        "README.md": b"# model\n",
        "model-Q8_0.gguf": random_bytes(5000, seed=71),
        "model-Q4_K_M.gguf": random_bytes(4000, seed=72),
    }
    first = hub.create_repo(REPO, files)

    def push_while_listing(req: LoggedRequest) -> None:
        if "/tree/" in req.path and hub.resolve(REPO, "main") == hub.resolve(REPO, first):
            hub.push(REPO, {"model-Q4_K_M.gguf": b"a newer Q4_K_M"})

    hub.hub.on_request = push_while_listing
    entry = ensure(f"hf://{REPO}:Q4_K_M", hub_opts)
    assert entry.path.read_bytes() == files["model-Q4_K_M.gguf"] and entry.commit == first
    trees = [r.path for r in hub.hub.requests("GET", "/tree/")]
    assert len(trees) == 3 and all(f"/tree/{first}" in p for p in trees)


# -- git-stored files ----------------------------------------------------------------------------
GIT_FILE = "tokenizer.json"


@pytest.fixture
def git_data() -> bytes:
    return random_bytes(3 * MiB, seed=91)


def test_a_git_file_comes_through_the_relative_307_checked_and_committed(
    hub: HubEmulator, hub_opts: EnsureOptions, git_data: bytes
) -> None:
    hub.token = "hf_secret"
    commit = hub.create_repo(REPO, {GIT_FILE: git_data}, lfs=False)
    entry = ensure(f"hf://{REPO}/{GIT_FILE}", hub_opts, bearer_token="hf_secret")
    assert entry.path.read_bytes() == git_data and entry.commit == commit
    assert (
        entry.etag
        == '"' + hashlib.sha1(b"blob %d\x00" % len(git_data) + git_data).hexdigest() + '"'
    )
    paths = [(r.method, r.path.split("?")[0], r.status) for r in hub.hub.log]
    cache = f"/api/resolve-cache/models/{REPO}/{commit}/{GIT_FILE}"
    assert paths == [
        ("HEAD", f"/{REPO}/resolve/main/{GIT_FILE}", 307),
        ("HEAD", cache, 200),
        ("GET", f"/{REPO}/resolve/{commit}/{GIT_FILE}", 307),
        ("GET", cache, 200),
    ]
    assert hub.cdn.log == []


@pytest.mark.parametrize("drop", [None, 1_000_000])
@pytest.mark.parametrize("same_size", [True, False])
def test_a_git_file_that_is_not_its_blob_is_never_stored(
    hub: HubEmulator,
    hub_opts: EnsureOptions,
    git_data: bytes,
    cache_dir: Path,
    same_size: bool,
    drop: int | None,
) -> None:
    hub.create_repo(REPO, {GIT_FILE: git_data}, lfs=False)
    sha1 = hashlib.sha1(b"blob %d\x00" % len(git_data) + git_data).hexdigest()
    hub.tampered[sha1] = git_data[::-1] if same_size else git_data + b"!"
    if drop:
        hub.hub.faults.path_contains = "/api/resolve-cache/"
        hub.hub.faults.drop_after.append(drop)  # resumed, then checked across the resume
    with pytest.raises(IntegrityError, match=r"SHA-1|bytes"):
        ensure(f"hf://{REPO}/{GIT_FILE}", hub_opts)
    assert not list(cache_dir.glob(f"entries/*/{GIT_FILE}*"))  # no file, no part


def test_a_git_file_resumed_after_a_dropped_connection_is_checked_whole(
    hub: HubEmulator, hub_opts: EnsureOptions, git_data: bytes
) -> None:
    commit = hub.create_repo(REPO, {GIT_FILE: git_data}, lfs=False)
    hub.hub.faults.path_contains = "/api/resolve-cache/"
    hub.hub.faults.drop_after.append(1_000_000)
    entry = ensure(f"hf://{REPO}/{GIT_FILE}", hub_opts)
    assert entry.path.read_bytes() == git_data and entry.commit == commit
    gets = hub.hub.requests("GET", "/api/resolve-cache/")
    assert [r.status for r in gets] == [200, 206]
    assert gets[1].header("If-Range") == entry.etag  # the blob id validates the resume


def test_a_git_files_blob_id_is_recorded_verified_and_dropped_with_its_content(
    hub: HubEmulator, hub_opts: EnsureOptions, cache_dir: Path
) -> None:
    """The sidecar records the git blob id the bytes were checked against (the mirror's
    ETag, the hub cache's blob name); ``verify`` checks it; other content loses it."""
    small, weights = random_bytes(3000, seed=92), random_bytes(5000, seed=93)
    hub.create_repo(REPO, {GIT_FILE: small, NAME: weights}, lfs=[NAME])
    sha1 = hashlib.sha1(b"blob %d\x00" % len(small) + small).hexdigest()
    entry = ensure(f"hf://{REPO}/{GIT_FILE}", hub_opts)
    assert entry.git_sha1 == sha1
    assert json.loads((entry.directory / "metadata.json").read_text())["git_sha1"] == sha1
    assert ensure(SOURCE, hub_opts).git_sha1 is None  # an LFS file is named by its SHA-256
    assert [r.ok for r in Cache(cache_dir).verify(entry.directory.name)] == [True]
    meta_path = entry.directory / "metadata.json"
    doc = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**doc, "git_sha1": "0" * 40}))  # well-formed, wrong
    (bad,) = Cache(cache_dir).verify(entry.directory.name)
    assert not bad.ok and "git blob id" in bad.detail and not entry.path.exists()
    entry = ensure(f"hf://{REPO}/{GIT_FILE}", hub_opts)
    other = small[::-1]  # same size, other content, pinned by its SHA-256
    entry.path.write_bytes(other)
    pinned = ensure(
        f"hf://{REPO}/{GIT_FILE}", hub_opts, policy="cache_only",
        sha256=hashlib.sha256(other).hexdigest(),
    )  # fmt: skip
    assert pinned.path.read_bytes() == other and pinned.git_sha1 is None
    assert json.loads(meta_path.read_text())["git_sha1"] is None


# -- validators ------------------------------------------------------------------------------------
def test_if_range_to_the_cdn_is_the_cdns_own_etag(
    hub: HubEmulator, hub_opts: EnsureOptions, big: bytes
) -> None:
    hub.create_repo(REPO, {NAME: big})
    sha = hashlib.sha256(big).hexdigest()
    token = CancelToken()
    hub.cdn.rate = 16e6  # per connection: the cancel lands long before the end
    with pytest.raises(CancelledError):
        ensure(SOURCE, hub_opts, connections=4, parallel_below_mbps=None, cancel=token,
               progress=lambda ev: token.cancel() if ev.bytes_done > 4 * MiB else None)  # fmt: skip
    hub.cdn.rate = None
    entry = ensure(SOURCE, hub_opts, connections=4, parallel_below_mbps=None)
    assert entry.sha256 == sha
    validators = [r.header("If-Range") for r in hub.cdn.log if r.header("Range")]
    assert validators and set(validators) == {cdn_etag(big)}
    assert all(sha not in (r.header("If-Range") or "") for r in hub.cdn.log + hub.hub.log)
    assert all(r.status == 206 for r in hub.cdn.log if r.header("Range"))
