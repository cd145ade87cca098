"""hf:// sources against the hub + CDN emulation: the hub's SHA-256 (X-Linked-Etag) is
enforced, the commit recorded, credentials stay with the hub, and offline switches make
zero requests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools.hub_emulator import HubEmulator
from modelfetch import (
    CacheMissError,
    DownloadError,
    EnsureOptions,
    IntegrityError,
    ProgressEvent,
    ensure,
)
from modelfetch.fetch.hub import parse_hub_headers

from .conftest import sha256_of

COMMIT = "a" * 40
REPO = "TheOrg/Tiny-GGUF"
SOURCE = f"hf://{REPO}/tiny-Q4_K_M.gguf"


@pytest.fixture
def published(hub: HubEmulator, blob: bytes) -> str:
    """The repo with one LFS file; returns its commit."""
    return hub.create_repo(REPO, {"tiny-Q4_K_M.gguf": blob})


def test_hub_sha_is_enforced_and_commit_recorded(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str, blob_sha: str
) -> None:
    hub.token = "hf_secret"
    entry = ensure(SOURCE, hub_opts, bearer_token="hf_secret")
    assert entry.sha256 == blob_sha == sha256_of(entry.path)
    assert entry.commit == published
    meta = json.loads((entry.directory / "metadata.json").read_text())
    assert meta["commit"] == published and "X-Amz" not in json.dumps(meta)
    assert [r.method for r in hub.hub.log] == ["HEAD", "GET"]
    assert all(r.header("Authorization") == "Bearer hf_secret" for r in hub.hub.log)
    assert hub.cdn.requests("GET") and not any(r.header("Authorization") for r in hub.cdn.log)


def test_a_lying_cdn_is_caught_by_the_hub_sha(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str, blob: bytes, cache_dir: Path
) -> None:
    hub.tampered[hashlib.sha256(blob).hexdigest()] = blob[::-1]
    with pytest.raises(IntegrityError):
        ensure(SOURCE, hub_opts)
    assert not list(cache_dir.glob("entries/*/tiny-Q4_K_M.gguf*"))  # nor a part


def test_pinned_sha_that_disagrees_with_the_hub_fails_before_downloading(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str
) -> None:
    with pytest.raises(IntegrityError, match="pinned"):
        ensure(SOURCE, hub_opts, sha256="1" * 64)
    assert hub.cdn.log == []


def test_hits_and_offline_make_zero_requests(
    hub: HubEmulator,
    hub_opts: EnsureOptions,
    published: str,
    blob_sha: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ensure(SOURCE, hub_opts)
    before = len(hub.hub.log) + len(hub.cdn.log)
    assert ensure(SOURCE, hub_opts).sha256 == blob_sha  # prefer_cached hit
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure(SOURCE, hub_opts, policy="refresh").sha256 == blob_sha  # offline wins
    assert len(hub.hub.log) + len(hub.cdn.log) == before
    with pytest.raises(CacheMissError, match="offline"):
        ensure(f"hf://{REPO}/other.gguf", hub_opts)
    assert len(hub.hub.log) + len(hub.cdn.log) == before


def test_refresh_with_unchanged_hub_sha_downloads_nothing(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str
) -> None:
    ensure(SOURCE, hub_opts)
    events: list[ProgressEvent] = []
    ensure(SOURCE, hub_opts, policy="refresh", progress=events.append)
    assert "not_modified" in [e.kind for e in events]
    assert [r.method for r in hub.hub.log] == ["HEAD", "GET", "HEAD"]
    assert len(hub.cdn.log) == 1


def test_refresh_follows_a_moved_branch(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str, blob: bytes
) -> None:
    ensure(SOURCE, hub_opts)
    new = blob[::-1]
    second = hub.push(REPO, {"tiny-Q4_K_M.gguf": new})
    entry = ensure(SOURCE, hub_opts, policy="refresh")
    assert entry.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(entry.path)
    assert entry.commit == second != published


@pytest.mark.parametrize(
    "source, words",
    [
        ("hf://TheOrg/Missing/x.gguf", "repository not found"),
        (f"hf://{REPO}@nope/tiny-Q4_K_M.gguf", "no such revision"),
        (f"hf://{REPO}/missing.gguf", "no such file at this revision"),
    ],
)
def test_hub_errors_are_one_clear_line(
    hub: HubEmulator, hub_opts: EnsureOptions, published: str, source: str, words: str
) -> None:
    with pytest.raises(DownloadError, match="404") as info:
        ensure(source, hub_opts)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    "headers, final, expected",
    [
        ({"X-Repo-Commit": COMMIT, "X-Linked-Etag": '"' + "c" * 64 + '"', "X-Linked-Size": "5"},
         False, (COMMIT, "c" * 64, 5, None)),
        ({"x-repo-commit": "nothex", "x-linked-etag": "W/\"abc\"", "x-linked-size": "-1"},
         False, (None, None, None, None)),
        ({"X-Linked-Size": "9" * 30, "X-Linked-Etag": "C" * 64},
         False, (None, "c" * 64, None, None)),
        ({}, False, (None, None, None, None)),
        # a git-stored file: the final answer's ETag is its blob id, Content-Length its size
        ({"X-Repo-Commit": COMMIT, "ETag": '"' + "d" * 40 + '"', "Content-Length": "12"},
         True, (COMMIT, None, 12, "d" * 40)),
        # ... but not on a redirect, not weak, not without a commit, not next to an LFS id
        ({"X-Repo-Commit": COMMIT, "ETag": '"' + "d" * 40 + '"', "Content-Length": "12"},
         False, (COMMIT, None, None, None)),
        ({"X-Repo-Commit": COMMIT, "ETag": 'W/"' + "d" * 40 + '"'},
         True, (COMMIT, None, None, None)),
        ({"ETag": '"' + "d" * 40 + '"', "Content-Length": "12"}, True, (None, None, None, None)),
        ({"X-Repo-Commit": COMMIT, "ETag": '"' + "d" * 40 + '"', "X-Linked-Etag": "e" * 64},
         True, (COMMIT, "e" * 64, None, None)),
    ],
)  # fmt: skip
def test_hub_headers_are_parsed_defensively(
    headers: dict[str, str],
    final: bool,
    expected: tuple[str | None, str | None, int | None, str | None],
) -> None:
    info = parse_hub_headers(headers, final=final)
    assert (info.commit, info.sha256, info.size, info.git_sha1) == expected
