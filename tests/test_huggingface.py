"""hf:// sources against an origin that answers like the Hugging Face resolve endpoint:
the hub's SHA-256 (X-Linked-Etag) is enforced, the commit recorded, credentials stay with
the hub, and offline switches make zero requests."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import (
    CacheMissError,
    DownloadError,
    EnsureOptions,
    IntegrityError,
    ProgressEvent,
    ensure,
)
from modelfetch.hf import parse_hub_headers

from .conftest import sha256_of

COMMIT = "a" * 40
RESOLVE = "/TheOrg/Tiny-GGUF/resolve/main/tiny-Q4_K_M.gguf"
SOURCE = "hf://TheOrg/Tiny-GGUF/tiny-Q4_K_M.gguf"


@pytest.fixture
def hub(
    server: FaultServer, other_server: FaultServer, monkeypatch: pytest.MonkeyPatch
) -> tuple[FaultServer, FaultServer]:
    """``server`` plays the hub, ``other_server`` the CDN it redirects LFS files to."""
    monkeypatch.setenv("HF_ENDPOINT", server.url(""))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MODELFETCH_OFFLINE", raising=False)
    return server, other_server


def publish(hub: tuple[FaultServer, FaultServer], data: bytes, linked: str | None = None) -> None:
    server, cdn = hub
    cdn_url = cdn.add("/blobs/tiny", Resource(data))
    sha = linked or hashlib.sha256(data).hexdigest()
    server.add(
        RESOLVE,
        Resource(
            b"",
            redirect_to=cdn_url + "?X-Amz-Signature=cdn-secret",
            headers={
                "X-Repo-Commit": COMMIT,
                "X-Linked-Etag": f'"{sha}"',
                "X-Linked-Size": str(len(data)),
            },
        ),
    )


def test_hub_sha_is_enforced_and_commit_recorded(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    publish(hub, blob)
    entry = ensure(SOURCE, opts, bearer_token="hf_secret")
    assert entry.sha256 == blob_sha == sha256_of(entry.path)
    assert entry.commit == COMMIT
    meta = json.loads((entry.directory / "metadata.json").read_text())
    assert meta["commit"] == COMMIT and "cdn-secret" not in json.dumps(meta)
    server, cdn = hub
    assert [r.method for r in server.log] == ["HEAD", "GET"]
    assert all(r.headers.get("Authorization") == "Bearer hf_secret" for r in server.log)
    assert all("Authorization" not in r.headers for r in cdn.log)  # token stays with the hub


def test_a_lying_cdn_is_caught_by_the_hub_sha(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    publish(hub, blob, linked="0" * 64)
    with pytest.raises(IntegrityError):
        ensure(SOURCE, opts)
    assert not list(cache_dir.glob("entries/*/tiny-Q4_K_M.gguf"))


def test_pinned_sha_that_disagrees_with_the_hub_fails_before_downloading(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions, blob: bytes
) -> None:
    publish(hub, blob)
    with pytest.raises(IntegrityError, match="pinned"):
        ensure(SOURCE, opts, sha256="1" * 64)
    assert hub[1].log == []


def test_hits_and_offline_make_zero_requests(
    hub: tuple[FaultServer, FaultServer],
    opts: EnsureOptions,
    blob: bytes,
    blob_sha: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    publish(hub, blob)
    ensure(SOURCE, opts)
    server, cdn = hub
    before = len(server.log) + len(cdn.log)
    assert ensure(SOURCE, opts).sha256 == blob_sha  # prefer_cached hit
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert ensure(SOURCE, opts, policy="refresh").sha256 == blob_sha  # offline wins
    assert len(server.log) + len(cdn.log) == before
    with pytest.raises(CacheMissError, match="offline"):
        ensure("hf://TheOrg/Tiny-GGUF/other.gguf", opts)
    assert len(server.log) + len(cdn.log) == before


def test_refresh_with_unchanged_hub_sha_downloads_nothing(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions, blob: bytes
) -> None:
    publish(hub, blob)
    ensure(SOURCE, opts)
    events: list[ProgressEvent] = []
    ensure(SOURCE, opts, policy="refresh", progress=events.append)
    assert "not_modified" in [e.kind for e in events]
    assert [r.method for r in hub[0].log] == ["HEAD", "GET", "HEAD"]
    assert len(hub[1].log) == 1


def test_refresh_follows_a_moved_branch(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions, blob: bytes
) -> None:
    publish(hub, blob)
    ensure(SOURCE, opts)
    new = blob[::-1]
    server, cdn = hub
    cdn.resources["/blobs/tiny"].replace_data(new)
    server.resources[RESOLVE].headers["X-Linked-Etag"] = hashlib.sha256(new).hexdigest()
    server.resources[RESOLVE].headers["X-Repo-Commit"] = "b" * 40
    entry = ensure(SOURCE, opts, policy="refresh")
    assert entry.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(entry.path)
    assert entry.commit == "b" * 40


def test_missing_repo_is_a_clear_404(
    hub: tuple[FaultServer, FaultServer], opts: EnsureOptions
) -> None:
    with pytest.raises(DownloadError, match="404"):
        ensure("hf://TheOrg/Missing/x.gguf", opts)


@pytest.mark.parametrize(
    "headers, expected",
    [
        ({"X-Repo-Commit": COMMIT, "X-Linked-Etag": '"' + "c" * 64 + '"', "X-Linked-Size": "5"},
         (COMMIT, "c" * 64, 5)),
        ({"x-repo-commit": "nothex", "x-linked-etag": "W/\"abc\"", "x-linked-size": "-1"},
         (None, None, None)),
        ({"X-Linked-Size": "9" * 30, "X-Linked-Etag": "C" * 64}, (None, "c" * 64, None)),
        ({}, (None, None, None)),
    ],
)  # fmt: skip
def test_hub_headers_are_parsed_defensively(
    headers: dict[str, str], expected: tuple[str | None, str | None, int | None]
) -> None:
    info = parse_hub_headers(headers)
    assert (info.commit, info.sha256, info.size) == expected
