"""The hub + CDN emulation itself: the real huggingface_hub client works against it, and it
answers like Hugging Face does (presigned 302 with expiry, relative 307 for git files, a
CDN with its own ETag, paginated tree listings, the hub's error codes)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import urllib3

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, git_blob_sha1

REPO = "TheOrg/Tiny-GGUF"
WEIGHTS = random_bytes(300_000, seed=21)
SHARD = random_bytes(200_000, seed=22)
CONFIG = b'{"architectures": ["Tiny"]}\n'
README = b"# Tiny\n"
FILES = {
    "tiny-Q4_K_M.gguf": WEIGHTS,
    "sub/dir/shard.safetensors": SHARD,
    "config.json": CONFIG,
    "README.md": README,
}


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(page_size=2, token="hf_secret") as e:
        e.create_repo(REPO, FILES)
        yield e


@pytest.fixture
def http() -> urllib3.PoolManager:
    return urllib3.PoolManager(retries=False, timeout=10)


AUTH = {"Authorization": "Bearer hf_secret"}


def download(http: urllib3.PoolManager, emu: HubEmulator, url: str) -> urllib3.BaseHTTPResponse:
    """GET from the hub, following its redirect by hand: the token stays with the hub."""
    r = http.request("GET", url, headers=AUTH, redirect=False)
    if r.status in (302, 307):
        target = r.headers["Location"]
        if target.startswith("/"):
            return http.request("GET", emu.hub.url(target), headers=AUTH)
        return http.request("GET", target)
    return r


def run_client(emu: HubEmulator, home: Path, code: str) -> Any:
    """Run ``code`` with the real huggingface_hub in its own process (it reads its settings
    from the environment at import time); the code prints one JSON document last."""
    env = {
        **os.environ,
        "HF_ENDPOINT": emu.endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_TOKEN": "hf_secret",
    }
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_real_client_downloads_lfs_and_git_files(emu: HubEmulator, tmp_path: Path) -> None:
    out = run_client(
        emu,
        tmp_path,
        f"""
        import json
        from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url
        lfs = get_hf_file_metadata(hf_hub_url({REPO!r}, "tiny-Q4_K_M.gguf"))
        git = get_hf_file_metadata(hf_hub_url({REPO!r}, "config.json"))
        paths = [hf_hub_download({REPO!r}, f) for f in ("tiny-Q4_K_M.gguf", "config.json")]
        print(json.dumps({{
            "lfs": [lfs.commit_hash, lfs.etag, lfs.size, lfs.location],
            "git": [git.commit_hash, git.etag, git.size],
            "paths": paths,
        }}))
        """,
    )
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    assert out["lfs"][:3] == [commit.oid, sha, len(WEIGHTS)]
    assert out["lfs"][3].startswith(emu.cdn.base + "/") and "X-Amz-Signature=" in out["lfs"][3]
    assert out["git"] == [commit.oid, git_blob_sha1(CONFIG), len(CONFIG)]
    assert [Path(p).read_bytes() for p in out["paths"]] == [WEIGHTS, CONFIG]
    assert all(f"/snapshots/{commit.oid}/" in p for p in out["paths"])
    # the token went to the hub on every request, never to the CDN
    assert all(r.header("Authorization") == "Bearer hf_secret" for r in emu.hub.log)
    assert emu.cdn.requests("GET") and not any(r.header("Authorization") for r in emu.cdn.log)
    # the git file came through the relative 307 to /api/resolve-cache/
    assert emu.hub.requests("GET", "/api/resolve-cache/models/")


def test_real_client_snapshot_with_xet_headers_and_pagination(
    emu: HubEmulator, tmp_path: Path
) -> None:
    emu.push(REPO, {"extra.bin": b"x" * 5000}, branch="refs/pr/1")
    out = run_client(
        emu,
        tmp_path,
        f"""
        import json, os
        from huggingface_hub import snapshot_download
        root = snapshot_download({REPO!r}, revision="refs/pr/1")
        files = {{}}
        for d, _, names in os.walk(root):
            for n in names:
                p = os.path.join(d, n)
                files[os.path.relpath(p, root)] = open(p, "rb").read().hex()
        print(json.dumps({{"root": root, "files": files}}))
        """,
    )
    commit = emu.resolve(REPO, "refs/pr/1")
    assert commit is not None and out["root"].endswith(commit.oid)
    expected = {**FILES, "extra.bin": b"x" * 5000}
    assert {k: bytes.fromhex(v) for k, v in out["files"].items()} == expected
    # one repo_info with the encoded revision, then the tree at the commit over 5 pages of 2
    assert emu.hub.requests("GET", "/api/models/TheOrg/Tiny-GGUF/revision/refs%2Fpr%2F1")
    pages = emu.hub.requests("GET", f"/api/models/{REPO}/tree/{commit.oid}")
    assert len(pages) == 4 and sum("cursor=" in p.path for p in pages) == 3  # 6 dirs+files
    assert not any(r.header("Authorization") for r in emu.cdn.log)


def test_lfs_resolve_is_a_presigned_302_with_hub_headers(
    emu: HubEmulator, http: urllib3.PoolManager
) -> None:
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    sha = hashlib.sha256(WEIGHTS).hexdigest()
    r = http.request(
        "HEAD", emu.resolve_url(REPO, "tiny-Q4_K_M.gguf"), headers=AUTH, redirect=False
    )
    assert r.status == 302
    assert r.headers["X-Repo-Commit"] == commit.oid
    assert r.headers["X-Linked-Etag"] == f'"{sha}"'
    assert r.headers["X-Linked-Size"] == str(len(WEIGHTS))
    assert "X-Xet-Hash" in r.headers and 'rel="xet-auth"' in r.headers["Link"]
    location = r.headers["Location"]
    assert location.startswith(emu.cdn.base) and "X-Amz-Expires=3600" in location
    cdn = http.request("GET", location)
    assert cdn.status == 200 and cdn.data == WEIGHTS
    for hub_header in ("X-Repo-Commit", "X-Linked-Etag", "X-Linked-Size"):
        assert hub_header not in cdn.headers
    cdn_etag = cdn.headers["ETag"]
    assert sha not in cdn_etag  # the CDN has its own validator
    part = http.request("GET", location, headers={"Range": "bytes=10-19", "If-Range": cdn_etag})
    assert part.status == 206 and part.data == WEIGHTS[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(WEIGHTS)}"
    foreign = http.request(
        "GET", location, headers={"Range": "bytes=10-19", "If-Range": f'"{sha}"'}
    )
    assert foreign.status == 200 and foreign.data == WEIGHTS  # the hub's sha is no validator
    leaked = http.request("GET", location, headers=AUTH)
    assert leaked.status == 400 and b"Only one auth mechanism" in leaked.data


def test_presigned_urls_expire_and_wrong_signatures_fail(
    emu: HubEmulator, http: urllib3.PoolManager
) -> None:
    head = http.request(
        "HEAD", emu.resolve_url(REPO, "tiny-Q4_K_M.gguf"), headers=AUTH, redirect=False
    )
    old = head.headers["Location"]
    tampered = old.replace("X-Amz-Expires=3600", "X-Amz-Expires=99999")
    bad = http.request("GET", tampered)
    assert bad.status == 403 and b"<Code>SignatureDoesNotMatch</Code>" in bad.data
    emu.advance_clock(3601)
    expired = http.request("GET", old)
    assert expired.status == 403 and b"<Code>AccessDenied</Code>" in expired.data
    assert b"Request has expired" in expired.data
    fresh = download(http, emu, emu.resolve_url(REPO, "tiny-Q4_K_M.gguf"))
    assert fresh.status == 200 and fresh.data == WEIGHTS  # the hub signs a new one


def test_git_file_is_a_relative_307_to_resolve_cache_with_its_blob_sha1(
    emu: HubEmulator, http: urllib3.PoolManager
) -> None:
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    r = http.request("GET", emu.resolve_url(REPO, "config.json"), headers=AUTH, redirect=False)
    assert r.status == 307
    location = r.headers["Location"]
    assert location.startswith(f"/api/resolve-cache/models/{REPO}/{commit.oid}/config.json?")
    final = http.request("GET", emu.hub.url(location), headers=AUTH)
    sha1 = hashlib.sha1(b"blob %d\x00" % len(CONFIG) + CONFIG).hexdigest()
    assert final.status == 200 and final.data == CONFIG
    assert final.headers["ETag"] == f'"{sha1}"' and final.headers["X-Repo-Commit"] == commit.oid
    assert final.headers["Content-Length"] == str(len(CONFIG))
    part = http.request("GET", emu.hub.url(location), headers={**AUTH, "Range": "bytes=2-5"})
    assert part.status == 206 and part.data == CONFIG[2:6]
    same = http.request(
        "GET",
        emu.resolve_url(REPO, "config.json"),
        headers={**AUTH, "If-None-Match": f'"{sha1}"'},
        redirect=False,
    )
    assert same.status == 304


def test_revisions_tags_commits_and_a_moved_branch(
    emu: HubEmulator, http: urllib3.PoolManager
) -> None:
    first = emu.resolve(REPO, "main")
    assert first is not None
    emu.tag(REPO, "v1.0", first.oid)
    second = emu.push(REPO, {"tiny-Q4_K_M.gguf": b"new weights"})
    for rev, data in (("main", b"new weights"), ("v1.0", WEIGHTS), (first.oid, WEIGHTS)):
        r = download(http, emu, emu.resolve_url(REPO, "tiny-Q4_K_M.gguf", rev))
        assert r.status == 200 and r.data == data, rev
    emu.move_branch(REPO, "main", first.oid)
    r = http.request("HEAD", emu.resolve_url(REPO, "config.json"), headers=AUTH, redirect=False)
    assert r.headers["X-Repo-Commit"] == first.oid != second


@pytest.mark.parametrize(
    "url_path, status, code",
    [
        ("/TheOrg/Missing/resolve/main/x.gguf", 404, "RepoNotFound"),
        (f"/{REPO}/resolve/nope/config.json", 404, "RevisionNotFound"),
        (f"/{REPO}/resolve/main/missing.gguf", 404, "EntryNotFound"),
        (f"/api/models/{REPO}/tree/main/nowhere", 404, "EntryNotFound"),
        (f"/api/models/{REPO}/revision/{'0' * 40}", 404, "RevisionNotFound"),
    ],
)
def test_errors_carry_the_hub_error_codes(
    emu: HubEmulator, http: urllib3.PoolManager, url_path: str, status: int, code: str
) -> None:
    r = http.request("GET", emu.hub.url(url_path), headers=AUTH, redirect=False)
    assert (r.status, r.headers.get("X-Error-Code")) == (status, code)


def test_the_hub_wants_its_token(emu: HubEmulator, http: urllib3.PoolManager) -> None:
    r = http.request("GET", emu.resolve_url(REPO, "config.json"), redirect=False)
    assert r.status == 401 and r.headers["X-Error-Code"] == "RepoNotFound"


def test_tree_listing_pages_and_folders(emu: HubEmulator, http: urllib3.PoolManager) -> None:
    url: str | None = emu.hub.url(f"/api/models/{REPO}/tree/main?recursive=true")
    items: list[dict[str, Any]] = []
    for _ in range(10):
        if url is None:
            break
        r = http.request("GET", url, headers=AUTH)
        assert r.status == 200
        page = json.loads(r.data)
        assert len(page) <= 2
        items += page
        link = r.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
    assert url is None
    by_path = {i["path"]: i for i in items}
    assert set(by_path) == {*FILES, "sub", "sub/dir"}
    weights = by_path["tiny-Q4_K_M.gguf"]
    assert weights["size"] == len(WEIGHTS)
    assert weights["lfs"]["oid"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert weights["lfs"]["pointerSize"] > 100
    assert (
        by_path["config.json"]["oid"] == git_blob_sha1(CONFIG)
        and "lfs" not in by_path["config.json"]
    )
    sub = http.request("GET", emu.hub.url(f"/api/models/{REPO}/tree/main/sub"), headers=AUTH)
    assert [i["path"] for i in json.loads(sub.data)] == ["sub/dir"]  # not recursive
    info = json.loads(http.request("GET", emu.hub.url(f"/api/models/{REPO}"), headers=AUTH).data)
    assert info["id"] == REPO and sorted(s["rfilename"] for s in info["siblings"]) == sorted(FILES)


def test_cdn_faults_and_rate_limit_are_logged(emu: HubEmulator, http: urllib3.PoolManager) -> None:
    head = http.request(
        "HEAD", emu.resolve_url(REPO, "tiny-Q4_K_M.gguf"), headers=AUTH, redirect=False
    )
    location = head.headers["Location"]
    emu.cdn.faults.fail(503, times=2)
    assert [http.request("GET", location).status for _ in range(3)] == [503, 503, 200]
    emu.cdn.faults.drop_after.append(1000)
    with pytest.raises(urllib3.exceptions.ProtocolError):
        http.request("GET", location)
    assert emu.cdn.log[-1].body_bytes == 1000
    emu.cdn.rate = 1_000_000.0
    r = http.request("GET", location, headers={"Range": "bytes=0-99999"})
    assert r.status == 206 and r.data == WEIGHTS[:100_000]
    assert emu.cdn.log[-1].body_bytes == 100_000
