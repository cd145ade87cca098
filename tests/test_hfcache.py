"""The Hugging Face cache layout: what modelfetch publishes is read by the real
huggingface_hub offline, and what huggingface_hub downloaded is adopted, never fetched twice."""

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

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, git_blob_sha1, lfs_pointer
from modelfetch import CacheMissError, EnsureOptions, ProgressEvent, ensure
from modelfetch.hfcache import HubCacheRepo, default_hub_cache, hub_cache_setting
from modelfetch.hubtree import RepoFile

REPO = "TheOrg/Tiny-Llama"
COMMIT = "1" * 40
WEIGHTS = random_bytes(400_000, seed=31)
CONFIG = b'{"model_type": "llama"}\n'
TOKENIZER = b'{"version": "1.0"}\n'
FILES = {
    "model.safetensors": WEIGHTS,
    "config.json": CONFIG,
    "tokenizer/tokenizer.json": TOKENIZER,
}


def repo_file(path: str, data: bytes, lfs: bool) -> RepoFile:
    if lfs:
        sha = hashlib.sha256(data).hexdigest()
        return RepoFile(path, len(data), git_blob_sha1(lfs_pointer(data)), sha, len(data))
    return RepoFile(path, len(data), git_blob_sha1(data))


TREE = [repo_file(p, d, p.endswith(".safetensors")) for p, d in FILES.items()]


def hf_offline(hub_cache: Path, code: str) -> Any:
    """The real huggingface_hub, offline, in its own process (it reads its environment at
    import time); ``code`` prints one JSON document last."""
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_OFFLINE": "1",
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
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


def local_entries(tmp_path: Path, opts: EnsureOptions) -> dict[str, Path]:
    """Each repo file as an ordinary modelfetch entry (imported from a local file)."""
    out = {}
    for path, data in FILES.items():
        src = tmp_path / "src" / path
        src.parent.mkdir(parents=True, exist_ok=True)
        src.write_bytes(data)
        out[path] = ensure(src, opts).path
    return out


READ_SNAPSHOT = """
    import json, os
    from huggingface_hub import hf_hub_download, snapshot_download
    out = {{}}
    for kwargs in ({{}}, {{"local_files_only": True}}):
        root = snapshot_download({repo!r}, **kwargs)
        files = {{}}
        for d, _, names in os.walk(root):
            for n in names:
                p = os.path.join(d, n)
                files[os.path.relpath(p, root)] = open(p, "rb").read().hex()
        out.setdefault("snapshots", []).append([root, files])
    out["single"] = open(hf_hub_download({repo!r}, "tokenizer/tokenizer.json"), "rb").read().hex()
    print(json.dumps(out))
"""


def test_published_snapshot_is_read_by_huggingface_hub_offline(
    tmp_path: Path, opts: EnsureOptions
) -> None:
    entries = local_entries(tmp_path, opts)
    hub = tmp_path / "hf" / "hub"
    repo = HubCacheRepo(hub, REPO)
    snap = repo.publish(COMMIT, "main", TREE, [(f, entries[f.path]) for f in TREE])

    out = hf_offline(hub, READ_SNAPSHOT.format(repo=REPO))
    for root, files in out["snapshots"]:
        assert Path(root) == snap.resolve()
        assert {k: bytes.fromhex(v) for k, v in files.items()} == FILES
    assert bytes.fromhex(out["single"]) == TOKENIZER
    # the layout, byte for byte as huggingface_hub writes it
    assert (repo.folder / "refs" / "main").read_bytes() == COMMIT.encode()  # no newline
    weights = snap / "model.safetensors"
    assert os.readlink(weights) == f"../../blobs/{hashlib.sha256(WEIGHTS).hexdigest()}"
    assert os.readlink(snap / "tokenizer" / "tokenizer.json") == (
        f"../../../blobs/{git_blob_sha1(TOKENIZER)}"
    )
    # blobs are the entries' own inodes: no second copy on disk
    for f in TREE:
        assert os.stat(repo.blob(f.hf_blob_name)).st_ino == os.stat(entries[f.path]).st_ino
    tree = json.loads(repo.tree(COMMIT).read_text())
    assert tree["format_version"] == 1
    assert tree["files"]["model.safetensors"] == {
        "size": len(WEIGHTS),
        "blob_id": TREE[0].blob_id,
        "lfs_sha256": hashlib.sha256(WEIGHTS).hexdigest(),
        "lfs_size": len(WEIGHTS),
    }
    assert not (repo.folder / ".modelfetch-tmp").exists()


def test_an_incomplete_snapshot_is_detected_offline(tmp_path: Path, opts: EnsureOptions) -> None:
    entries = local_entries(tmp_path, opts)
    hub = tmp_path / "hub"
    partial = [f for f in TREE if f.path != "model.safetensors"]
    HubCacheRepo(hub, REPO).publish(COMMIT, "main", TREE, [(f, entries[f.path]) for f in partial])
    out = hf_offline(
        hub,
        f"""
        import json
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import IncompleteSnapshotError
        try:
            snapshot_download({REPO!r})
            print(json.dumps("complete"))
        except IncompleteSnapshotError as exc:
            print(json.dumps(str(exc)))
        """,
    )
    assert "model.safetensors" in out and "incomplete" in out


def test_publishing_twice_adds_files_and_keeps_the_layout_valid(
    tmp_path: Path, opts: EnsureOptions
) -> None:
    entries = local_entries(tmp_path, opts)
    hub = tmp_path / "hub"
    repo = HubCacheRepo(hub, REPO)
    repo.publish(COMMIT, "main", TREE, [(TREE[1], entries["config.json"])])
    repo.publish(COMMIT, "main", TREE, [(f, entries[f.path]) for f in TREE])
    out = hf_offline(
        hub,
        """
        import json
        from huggingface_hub import scan_cache_dir
        info = scan_cache_dir()
        repos = [[r.repo_id, len(r.revisions), sorted(f.file_name for v in r.revisions
                  for f in v.files), sorted(r.refs)] for r in info.repos]
        print(json.dumps([repos, [str(w) for w in info.warnings]]))
        """,
    )
    assert out == [
        [[REPO, 1, ["config.json", "model.safetensors", "tokenizer.json"], ["main"]]],
        [],
    ]


def test_hub_cache_location_follows_huggingface_hub(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "MODELFETCH_HF_CACHE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_hub_cache() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert default_hub_cache() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "exact"))
    assert default_hub_cache() == tmp_path / "exact"
    assert hub_cache_setting(None).publish is False  # adopt only, by default
    assert hub_cache_setting(True).root == tmp_path / "exact"
    assert hub_cache_setting(False).root is None
    monkeypatch.setenv("MODELFETCH_HF_CACHE", str(tmp_path / "elsewhere"))
    assert hub_cache_setting(None) == hub_cache_setting(tmp_path / "elsewhere")
    assert hub_cache_setting(None).publish is True
    monkeypatch.setenv("MODELFETCH_HF_CACHE", "0")
    assert hub_cache_setting(None).root is None


# -- adoption: what huggingface_hub downloaded is not downloaded again ---------------------
@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEmulator]:
    with HubEmulator(xet=False) as e:
        e.create_repo(REPO, FILES)
        monkeypatch.setenv("HF_ENDPOINT", e.endpoint)
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MODELFETCH_OFFLINE", "MODELFETCH_HF_CACHE"):
            monkeypatch.delenv(name, raising=False)
        yield e


def hf_download(emu: HubEmulator, hub_cache: Path, files: list[str]) -> None:
    """The real huggingface_hub fills its cache from the emulated hub."""
    env = {
        **os.environ,
        "HF_ENDPOINT": emu.endpoint,
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    }
    code = (
        "from huggingface_hub import hf_hub_download\n"
        f"for f in {files!r}: hf_hub_download({REPO!r}, f)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_a_file_in_the_hub_cache_is_adopted_not_downloaded(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors"])
    emu.hub.log.clear()
    emu.cdn.log.clear()
    events: list[ProgressEvent] = []
    entry = ensure(f"hf://{REPO}/model.safetensors", opts, hf_cache=hub, progress=events.append)
    assert entry.path.read_bytes() == WEIGHTS
    assert entry.sha256 == hashlib.sha256(WEIGHTS).hexdigest()
    assert entry.commit == emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    # refs/main and the snapshot link named the blob; its content proved it: no request
    assert emu.hub.log == [] and emu.cdn.log == []
    assert "adopted" in [e.kind for e in events]
    blob = HubCacheRepo(hub, REPO).blob(hashlib.sha256(WEIGHTS).hexdigest())
    assert os.stat(blob).st_ino == os.stat(entry.path).st_ino  # linked, not copied
    again = ensure(f"hf://{REPO}/model.safetensors", opts, hf_cache=hub)
    assert again.path == entry.path and emu.hub.log == []  # an ordinary cache hit now


def test_a_blob_the_hub_names_is_adopted_under_another_revision(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors"])
    emu.tag(REPO, "v1", emu.resolve(REPO, "main").oid)  # type: ignore[union-attr]
    emu.hub.log.clear()
    emu.cdn.log.clear()
    entry = ensure(f"hf://{REPO}@v1/model.safetensors", opts, hf_cache=hub)
    assert entry.path.read_bytes() == WEIGHTS
    assert [r.method for r in emu.hub.log] == ["HEAD"]  # the hub named the SHA-256...
    assert emu.cdn.log == []  # ...which the hub cache had: nothing was downloaded


def test_offline_adoption_by_ref_and_snapshot_link_makes_no_request(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors", "tokenizer/tokenizer.json"])
    emu.hub.log.clear()
    emu.cdn.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))  # found where huggingface_hub looks
    for path, data in (("tokenizer/tokenizer.json", TOKENIZER), ("model.safetensors", WEIGHTS)):
        entry = ensure(f"hf://{REPO}/{path}", opts)
        assert entry.path.read_bytes() == data
        assert entry.commit == emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    assert emu.hub.log == [] and emu.cdn.log == []  # no request while offline
    with pytest.raises(CacheMissError):
        ensure(f"hf://{REPO}/config.json", opts)  # huggingface_hub never fetched it


def test_a_corrupt_hub_cache_blob_is_not_adopted(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors"])
    blob = HubCacheRepo(hub, REPO).blob(hashlib.sha256(WEIGHTS).hexdigest())
    bad = bytearray(blob.read_bytes())
    bad[1000] ^= 0xFF
    blob.write_bytes(bytes(bad))
    emu.cdn.log.clear()
    entry = ensure(f"hf://{REPO}/model.safetensors", opts, hf_cache=hub)
    assert entry.path.read_bytes() == WEIGHTS
    assert emu.cdn.requests("GET")  # downloaded, since the hub cache copy was wrong
    assert blob.read_bytes() == bytes(bad)  # and theirs was left alone (not ours to fix)
    assert os.stat(blob).st_ino != os.stat(entry.path).st_ino


def test_adoption_can_be_switched_off(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors"])
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    emu.cdn.log.clear()
    ensure(f"hf://{REPO}/model.safetensors", opts, hf_cache=False)
    assert emu.cdn.requests("GET")
