"""``modelfetch serve`` as a Hugging Face mirror, used by the real huggingface_hub client."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from http.client import HTTPConnection
from pathlib import Path

import pytest
import urllib3

from devtools.fault_server import FaultServer, Resource
from devtools.hub_emulator import HubEmulator
from modelfetch import ModelSource, ensure
from modelfetch.mirror import MirrorServer

REPO = "TheOrg/Tiny-GGUF"
FILE = "sub/tiny-Q4_K_M.gguf"


@pytest.fixture
def commit(hub: HubEmulator, blob: bytes) -> str:
    """The upstream: the hub + CDN emulation with one LFS file; returns its commit."""
    return hub.create_repo(REPO, {FILE: blob})


@pytest.fixture
def upstream(hub: HubEmulator, commit: str) -> str:
    return hub.endpoint


@pytest.fixture
def mirror(tmp_path: Path, upstream: str) -> Iterator[MirrorServer]:
    with MirrorServer(tmp_path / "mirror-cache", upstream=upstream) as m:
        yield m


def hf_download(endpoint: str, home: Path, revision: str = "main") -> Path:
    """The real huggingface_hub, in its own process so HF_ENDPOINT is read fresh."""
    code = textwrap.dedent(f"""
        from huggingface_hub import hf_hub_download
        print(hf_hub_download({REPO!r}, {FILE!r}, revision={revision!r},
                              cache_dir={str(home / "hub")!r}))
    """)
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    env.pop("HF_TOKEN", None)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return Path(proc.stdout.strip().splitlines()[-1])


def test_huggingface_hub_downloads_through_the_mirror(
    mirror: MirrorServer, hub: HubEmulator, commit: str, tmp_path: Path, blob: bytes
) -> None:
    first = hf_download(mirror.url, tmp_path / "client1")
    assert first.read_bytes() == blob
    assert commit in str(first)  # the snapshot folder is named after the hub's commit
    second = hf_download(mirror.url, tmp_path / "client2")
    assert second.read_bytes() == blob
    # two clients, one pull from the upstream (HEAD + GET at the hub, one GET at the CDN)
    assert len(hub.cdn.requests("GET")) == 1
    assert len(hub.hub.requests("GET", "/resolve/")) == 1


def test_modelfetch_clients_pin_the_commit_and_the_mirror_pulls_once(
    tmp_path: Path, hub: HubEmulator, commit: str, blob_sha: str
) -> None:
    """modelfetch asks the mirror for /resolve/<commit>/ after resolving main: that is a hit
    on what the mirror cached for main, also after a restart of the mirror."""
    source = ModelSource.huggingface(REPO, FILE)
    cache = tmp_path / "mirror-cache"
    with MirrorServer(cache, upstream=hub.endpoint) as m:
        for client in ("c1", "c2"):
            entry = ensure(source, cache_dir=tmp_path / client, hf_endpoint=m.url)
            assert entry.sha256 == blob_sha and entry.commit == commit
    with MirrorServer(cache, upstream=hub.endpoint) as m:
        assert ensure(source, cache_dir=tmp_path / "c3", hf_endpoint=m.url).commit == commit
    assert len(hub.cdn.requests("GET")) == 1  # one pull from the upstream for three clients


def test_pinned_clients_get_entries_cached_without_a_hub_commit(
    tmp_path: Path, server: FaultServer, blob: bytes, blob_sha: str
) -> None:
    """An upstream that names no commit: the mirror makes one up, and a client that pins
    it (asking for /resolve/<that>/) gets the same entry, not a pull of a made-up commit."""
    server.add(f"/{REPO}/resolve/main/{FILE}", Resource(blob))
    with MirrorServer(tmp_path / "m", upstream=server.url("")) as m:
        entry = ensure(ModelSource.huggingface(REPO, FILE), cache_dir=tmp_path / "c",
                       hf_endpoint=m.url)  # fmt: skip
    assert entry.sha256 == blob_sha and entry.commit is not None
    assert len(server.requests_for(f"/{REPO}/resolve/main/{FILE}")) == 1
    assert [r.path for r in server.log if f"/resolve/{entry.commit}/" in r.path] == []


def test_mirror_speaks_range_etag_and_hub_headers(
    mirror: MirrorServer, commit: str, blob: bytes, blob_sha: str
) -> None:
    pool = urllib3.PoolManager()
    url = f"{mirror.url}/{REPO}/resolve/main/{FILE}"
    head = pool.request("HEAD", url)
    assert head.status == 200
    assert head.headers["X-Linked-Etag"] == f'"{blob_sha}"'
    assert head.headers["X-Linked-Size"] == str(len(blob))
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["Content-Length"] == str(len(blob))
    part = pool.request("GET", url, headers={"Range": "bytes=100-199"})
    assert part.status == 206 and part.data == blob[100:200]
    assert part.headers["Content-Range"] == f"bytes 100-199/{len(blob)}"
    tail = pool.request("GET", url, headers={"Range": "bytes=-10"})
    assert tail.data == blob[-10:]
    stale = pool.request("GET", url, headers={"Range": "bytes=0-9", "If-Range": '"other"'})
    assert stale.status == 200 and hashlib.sha256(stale.data).hexdigest() == blob_sha
    same = pool.request("GET", url, headers={"If-None-Match": f'"{blob_sha}"'})
    assert same.status == 304
    bad = pool.request("GET", url, headers={"Range": f"bytes={len(blob)}-"})
    assert bad.status == 416
    for ignored in ("bytes=abc", "bytes=0-1,5-6", "items=0-5", "bytes=" + "9" * 40 + "-"):
        whole = pool.request("GET", url, headers={"Range": ignored})
        assert whole.status == 200 and len(whole.data) == len(blob), ignored
    backwards = pool.request("GET", url, headers={"Range": "bytes=50-10"})
    assert backwards.status == 416


def test_mirror_rejects_hostile_paths_and_reports_upstream_404(
    mirror: MirrorServer, tmp_path: Path
) -> None:
    pool = urllib3.PoolManager()
    for path in (
        f"/{REPO}/resolve/main/../../etc/passwd",
        f"/{REPO}/resolve/main/a%2F..%2F..%2Fx",
        "/bad--name/repo/resolve/main/x.gguf",
        f"/{REPO}/resolve/..%2F/x.gguf",
    ):
        # http.client sends the path exactly as written (urllib3 would resolve the dots)
        conn = HTTPConnection(*mirror.server_address, timeout=10)
        conn.request("GET", path)
        assert conn.getresponse().status == 400, path
        conn.close()
    missing = pool.request("GET", f"{mirror.url}/{REPO}/resolve/main/missing.gguf")
    assert missing.status == 404
    assert pool.request("GET", mirror.url + "/nope").status == 404
    assert pool.request("GET", mirror.url + "/healthz").data == b"ok\n"


def test_offline_mirror_serves_cache_only(
    tmp_path: Path, upstream: str, hub: HubEmulator, blob: bytes
) -> None:
    cache = tmp_path / "c"
    ensure(ModelSource.huggingface(REPO, FILE), cache_dir=cache, hf_endpoint=upstream)
    before = len(hub.hub.log)
    with MirrorServer(cache, offline=True, upstream=upstream) as m:
        pool = urllib3.PoolManager()
        ok = pool.request("GET", f"{m.url}/{REPO}/resolve/main/{FILE}")
        assert ok.status == 200 and ok.data == blob
        miss = pool.request("GET", f"{m.url}/{REPO}/resolve/main/other.gguf")
        assert miss.status == 404
    assert len(hub.hub.log) == before


def test_by_key_route_serves_url_entries(tmp_path: Path, server: FaultServer, blob: bytes) -> None:
    url = server.add("/plain/model.bin", Resource(blob))
    entry = ensure(url, cache_dir=tmp_path / "k")
    with MirrorServer(tmp_path / "k", offline=True) as m:
        pool = urllib3.PoolManager()
        resp = pool.request("GET", f"{m.url}/by-key/{entry.cache_key}")
        assert resp.status == 200 and resp.data == blob
        assert pool.request("GET", f"{m.url}/by-key/{'0' * 64}").status == 404


def test_serve_command_end_to_end(tmp_path: Path, upstream: str, commit: str, blob: bytes) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(tmp_path / "c"), "serve",
         "--port", "0", "--upstream", upstream],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()  # "modelfetch mirror on http://127.0.0.1:PORT (...)"
        url = first.split(" on ", 1)[1].split(" ", 1)[0]
        pool = urllib3.PoolManager()
        resp = pool.request("GET", f"{url}/{REPO}/resolve/main/{FILE}", timeout=30)
        assert resp.status == 200 and resp.data == blob
        assert resp.headers["X-Repo-Commit"] == commit
    finally:
        proc.terminate()
        proc.wait(timeout=10)
