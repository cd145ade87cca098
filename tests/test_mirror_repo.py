"""Whole repositories through ``modelfetch serve``: the real ``snapshot_download`` and
``hf download`` work against the mirror's hub API routes, with Xet stripped."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import urllib3

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, default_lfs, git_blob_sha1
from modelfetch import ensure, snapshot
from modelfetch.mirror import MirrorServer

REPO = "TheOrg/Tiny-LM"
FILES = {
    "config.json": b'{"model_type": "llama"}\n',
    "tokenizer/tokenizer.json": b'{"vocab": [1, 2, 3]}\n',
    "model-00001-of-00002.safetensors": random_bytes(700_000, seed=81),
    "model-00002-of-00002.safetensors": random_bytes(300_000, seed=82),
    "README.md": b"# Tiny\n",
}


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator(xet=True) as e:  # the upstream advertises Xet; the mirror must not
        e.create_repo(REPO, FILES)
        yield e


@pytest.fixture
def mirror(tmp_path: Path, emu: HubEmulator) -> Iterator[MirrorServer]:
    with MirrorServer(tmp_path / "mirror-cache", upstream=emu.endpoint, api_page_size=2) as m:
        yield m


def client_env(mirror: MirrorServer, home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": mirror.url,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "HF_HUB_DISABLE_XET"):
        env.pop(name, None)  # Xet stays enabled in the client: the mirror must steer it off
    return env


def read_tree(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def test_snapshot_download_through_the_mirror(
    mirror: MirrorServer, emu: HubEmulator, tmp_path: Path
) -> None:
    code = textwrap.dedent(f"""
        from huggingface_hub import snapshot_download
        print(snapshot_download({REPO!r}))
    """)
    for home in (tmp_path / "client-1", tmp_path / "client-2"):
        proc = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env=client_env(mirror, home),
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        root = Path(proc.stdout.strip().splitlines()[-1])
        assert read_tree(root) == FILES
        if home.name == "client-1":
            upstream_files = len(emu.hub.requests("GET", "/resolve/"))
    # the second client was served from the mirror's cache: no file went upstream again
    assert len(emu.hub.requests("GET", "/resolve/")) == upstream_files
    assert len(emu.cdn.requests("GET")) == 2  # each LFS file crossed from the CDN once
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    # ...and the upstream tree was listed once, at the commit, for both clients
    assert len(emu.hub.requests("GET", f"/api/models/{REPO}/tree/{commit}")) == 1
    assert len(emu.hub.requests("GET", f"/api/models/{REPO}/tree/")) == 1


def test_hf_download_cli_through_the_mirror(
    mirror: MirrorServer, emu: HubEmulator, tmp_path: Path
) -> None:
    hf = Path(sys.executable).with_name("hf")
    proc = subprocess.run(
        [str(hf), "download", REPO, "--include", "*.json", "--include", "*.safetensors", "-q"],
        capture_output=True,
        text=True,
        env=client_env(mirror, tmp_path / "home"),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = Path(proc.stdout.strip().splitlines()[-1])
    assert root.is_dir(), proc.stdout
    assert read_tree(root) == {k: v for k, v in FILES.items() if k != "README.md"}


def test_api_routes_paginate_and_strip_xet(
    mirror: MirrorServer, emu: HubEmulator, tmp_path: Path
) -> None:
    http = urllib3.PoolManager(retries=False, timeout=10)
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    info = http.request("GET", f"{mirror.url}/api/models/{REPO}/revision/main")
    assert info.status == 200 and json.loads(info.data)["sha"] == commit
    assert sorted(s["rfilename"] for s in json.loads(info.data)["siblings"]) == sorted(FILES)
    url: str | None = f"{mirror.url}/api/models/{REPO}/tree/main?recursive=true"
    items = []
    for _ in range(10):
        if url is None:
            break
        page = http.request("GET", url)
        assert page.status == 200 and len(json.loads(page.data)) <= 2
        items += json.loads(page.data)
        link = page.headers.get("Link")
        url = link.split(";")[0].strip("<>") if link else None
    assert url is None
    assert {i["path"] for i in items} == {*FILES, "tokenizer"}
    assert not any("xetHash" in i for i in items)  # upstream sent them; the mirror does not
    weights = next(i for i in items if i["path"] == "model-00001-of-00002.safetensors")
    assert weights["lfs"]["size"] == len(FILES["model-00001-of-00002.safetensors"])
    head = http.request(
        "HEAD", f"{mirror.url}/{REPO}/resolve/{commit}/model-00001-of-00002.safetensors"
    )
    assert head.status == 200 and "X-Xet-Hash" not in head.headers
    assert "xet" not in (head.headers.get("Link") or "")
    missing = http.request("GET", f"{mirror.url}/api/models/TheOrg/Missing/revision/main")
    assert missing.status == 404 and missing.headers["X-Error-Code"] == "RepoNotFound"


def test_modelfetch_snapshot_through_the_mirror_then_offline_mirror(
    tmp_path: Path, emu: HubEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    with MirrorServer(tmp_path / "mirror-cache", upstream=emu.endpoint) as online:
        monkeypatch.setenv("HF_ENDPOINT", online.url)
        first = snapshot(f"hf://{REPO}", cache_dir=tmp_path / "client-a", hf_cache=False)
        assert read_tree(first.path) == FILES
    with MirrorServer(tmp_path / "mirror-cache", offline=True) as offline:
        monkeypatch.setenv("HF_ENDPOINT", offline.url)
        emu.hub.log.clear()
        again = snapshot(f"hf://{REPO}", cache_dir=tmp_path / "client-b", hf_cache=False)
        assert read_tree(again.path) == FILES and again.commit == first.commit
        assert emu.hub.log == []


# -- the ETag a client names its blob after: the hub's, for both kinds of file -------------------
def blobs(hub_cache: Path) -> dict[str, bytes]:
    folder = hub_cache / f"models--{REPO.replace('/', '--')}" / "blobs"
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def download_snapshot(env: dict[str, str]) -> None:
    code = f"from huggingface_hub import snapshot_download; snapshot_download({REPO!r})"
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_huggingface_hub_names_blobs_through_the_mirror_as_from_the_hub(
    emu: HubEmulator, tmp_path: Path
) -> None:
    """huggingface_hub names each blob after X-Linked-Etag, else ETag: the SHA-256 of an LFS
    file, the git blob id of a git-stored one. Through the mirror (pulling through, then
    restarted offline: from the sidecars) its cache must look as if filled from the hub."""
    direct = client_env_for(emu.endpoint, tmp_path / "direct")
    direct["HF_HUB_DISABLE_XET"] = "1"  # the emulator's CDN speaks plain HTTP only
    download_snapshot(direct)
    with MirrorServer(tmp_path / "mirror-cache", upstream=emu.endpoint) as online:
        download_snapshot(client_env(online, tmp_path / "pulled"))
    with MirrorServer(tmp_path / "mirror-cache", offline=True) as offline:
        download_snapshot(client_env(offline, tmp_path / "cached"))
    expected = {
        hashlib.sha256(data).hexdigest() if default_lfs(path) else git_blob_sha1(data): data
        for path, data in FILES.items()
    }
    assert blobs(tmp_path / "direct" / "hub") == expected
    assert blobs(tmp_path / "pulled" / "hub") == expected
    assert blobs(tmp_path / "cached" / "hub") == expected


def client_env_for(endpoint: str, home: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE"):
        env.pop(name, None)
    return env


def test_git_stored_files_carry_their_blob_id_as_etag(
    mirror: MirrorServer, emu: HubEmulator, tmp_path: Path
) -> None:
    http = urllib3.PoolManager(retries=False, timeout=10)
    data = FILES["config.json"]
    sha1, sha256 = git_blob_sha1(data), hashlib.sha256(data).hexdigest()
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    hub = http.request("HEAD", f"{emu.endpoint}/{REPO}/resolve/main/config.json")  # 307 followed
    url = f"{mirror.url}/{REPO}/resolve/main/config.json"
    head = http.request("HEAD", url)
    assert head.status == 200 and head.headers["ETag"] == hub.headers["ETag"] == f'"{sha1}"'
    assert head.headers["X-Repo-Commit"] == commit
    assert head.headers["Content-Length"] == str(len(data))
    assert "X-Linked-Etag" not in head.headers and "X-Linked-Size" not in head.headers
    # the validators are that ETag: conditional requests and ranges agree with it
    assert http.request("GET", url, headers={"If-None-Match": f'"{sha1}"'}).status == 304
    assert http.request("GET", url, headers={"If-None-Match": f'"{sha256}"'}).status == 200
    part = http.request("GET", url, headers={"Range": "bytes=2-5", "If-Range": f'"{sha1}"'})
    assert part.status == 206 and part.data == data[2:6]
    stale = http.request("GET", url, headers={"Range": "bytes=2-5", "If-Range": f'"{sha256}"'})
    assert stale.status == 200 and stale.data == data
    # an LFS file keeps the hub's LFS headers
    weights = FILES["model-00001-of-00002.safetensors"]
    lfs = http.request("HEAD", f"{mirror.url}/{REPO}/resolve/main/model-00001-of-00002.safetensors")
    assert lfs.headers["X-Linked-Etag"] == lfs.headers["ETag"]
    assert lfs.headers["ETag"] == f'"{hashlib.sha256(weights).hexdigest()}"'
    assert lfs.headers["X-Linked-Size"] == str(len(weights))
    # modelfetch behind the mirror checks and records the blob id too (mirrors can chain)
    entry = ensure(f"hf://{REPO}/config.json", cache_dir=tmp_path / "client", hf_cache=False,
                   hf_endpoint=mirror.url)  # fmt: skip
    assert entry.git_sha1 == sha1 and entry.commit == commit and entry.sha256 == sha256
