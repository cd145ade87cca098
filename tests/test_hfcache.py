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

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator, git_blob_sha1, lfs_pointer
from modelfetch import Cache, CacheMissError, EnsureOptions, ModelSource, ProgressEvent, ensure
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
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = tmp_path / "hub"
    hf_download(emu, hub, ["model.safetensors"])
    blob = HubCacheRepo(hub, REPO).blob(hashlib.sha256(WEIGHTS).hexdigest())
    bad = bytearray(blob.read_bytes())
    bad[1000] ^= 0xFF
    blob.write_bytes(bytes(bad))
    emu.cdn.log.clear()
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))  # adopted from, not published into
    entry = ensure(f"hf://{REPO}/model.safetensors", opts)
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


# -- single hf:// files published with hf_cache / --hf-cache / MODELFETCH_HF_CACHE -------------
def blob_names(hub_cache: Path, repo_id: str = REPO) -> list[str]:
    return sorted(os.listdir(HubCacheRepo(hub_cache, repo_id).folder / "blobs"))


READ_FILES = """
    import json
    from huggingface_hub import hf_hub_download
    print(json.dumps({{p: open(hf_hub_download({repo!r}, p, revision={rev!r},
                                               local_files_only=True), "rb").read().hex()
                      for p in {paths!r}}}))
"""


def read_offline(hub_cache: Path, paths: list[str], repo: str = REPO, rev: str = "main") -> Any:
    out = hf_offline(hub_cache, READ_FILES.format(repo=repo, rev=rev, paths=paths))
    return {p: bytes.fromhex(v) for p, v in out.items()}


def test_single_files_are_published_as_huggingface_hub_would_have_them(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions
) -> None:
    hub = tmp_path / "hub"
    entries = {p: ensure(f"hf://{REPO}/{p}", opts, hf_cache=hub) for p in FILES}
    assert read_offline(hub, list(FILES)) == FILES  # the real client, offline
    # blobs named as huggingface_hub names them from the hub: git blob id or SHA-256
    theirs = tmp_path / "theirs"
    hf_download(emu, theirs, list(FILES))
    assert blob_names(hub) == blob_names(theirs) == sorted(f.hf_blob_name for f in TREE)
    repo = HubCacheRepo(hub, REPO)
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    assert (repo.folder / "refs" / "main").read_bytes() == commit.encode()  # no newline
    for f in TREE:
        assert os.stat(repo.blob(f.hf_blob_name)).st_ino == os.stat(entries[f.path].path).st_ino
    # single files are not a snapshot: no tree listing claims the commit is complete
    assert not (repo.folder / "trees").exists()
    assert not (repo.folder / ".modelfetch-tmp").exists()
    # the new hard links changed the entries' ctime: their stamps were renewed, so the
    # repeat is a plain hit (no request, no hashing) and publishes nothing again
    emu.hub.log.clear()
    cache = Cache(opts.cache_dir)
    for path in FILES:
        assert cache.lookup_fast(ModelSource.parse(f"hf://{REPO}/{path}"), None) is not None
        assert ensure(f"hf://{REPO}/{path}", opts, hf_cache=hub).path == entries[path].path
    assert emu.hub.log == []


def test_a_hit_does_not_move_a_ref_back_but_a_download_moves_it_on(
    emu: HubEmulator, tmp_path: Path, opts: EnsureOptions
) -> None:
    hub = tmp_path / "hub"
    old = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    ensure(f"hf://{REPO}/config.json", opts, hf_cache=False)  # cached at the old commit
    new_config = b'{"model_type": "llama", "v": 2}\n'
    new = emu.push(REPO, {"config.json": new_config})
    hf_download(emu, hub, ["config.json"])  # huggingface_hub: refs/main -> new
    ref = HubCacheRepo(hub, REPO).folder / "refs" / "main"
    assert ref.read_bytes() == new.encode()
    hit = ensure(f"hf://{REPO}/config.json", opts, hf_cache=hub)  # no request: old commit
    assert hit.commit == old and hit.path.read_bytes() == CONFIG
    assert ref.read_bytes() == new.encode()  # not moved back to what we happen to have
    assert read_offline(hub, ["config.json"]) == {"config.json": new_config}
    assert read_offline(hub, ["config.json"], rev=old) == {"config.json": CONFIG}
    emu.move_branch(REPO, "main", old)  # the hub says main is old again: a download says so
    fresh = ensure(f"hf://{REPO}/tokenizer/tokenizer.json", opts, hf_cache=hub)
    assert fresh.commit == old and ref.read_bytes() == old.encode()


SPLIT_REPO = "TheOrg/Split-GGUF"
SHARD_FILES = {
    f"Q4_K_M/split-Q4_K_M-0000{i}-of-00002.gguf": random_bytes(3000 + i, seed=40 + i)
    for i in (1, 2)
}


def modelfetch_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_cli_publishes_a_split_set_chosen_by_tag_also_on_a_later_hit(
    emu: HubEmulator, tmp_path: Path
) -> None:
    emu.create_repo(SPLIT_REPO, SHARD_FILES)
    root = ["--cache-dir", str(tmp_path / "cache")]
    hub = tmp_path / "hub"
    modelfetch_cli([*root, "get", f"hf://{SPLIT_REPO}:Q4_K_M", "-q"], {})
    assert not hub.exists()  # not asked to publish
    # a plain hit (the launcher's fast path) with MODELFETCH_HF_CACHE must still publish
    modelfetch_cli([*root, "get", f"hf://{SPLIT_REPO}:Q4_K_M", "-q"],
                   {"MODELFETCH_HF_CACHE": str(hub)})  # fmt: skip
    assert read_offline(hub, list(SHARD_FILES), repo=SPLIT_REPO) == SHARD_FILES
    assert blob_names(hub, SPLIT_REPO) == sorted(
        hashlib.sha256(d).hexdigest() for d in SHARD_FILES.values()
    )
    other = tmp_path / "hub2"
    first = next(iter(SHARD_FILES))
    modelfetch_cli([*root, "get", f"hf://{SPLIT_REPO}/{first}", f"--hf-cache={other}", "-q"], {})
    assert read_offline(other, list(SHARD_FILES), repo=SPLIT_REPO) == SHARD_FILES
    assert not (HubCacheRepo(other, SPLIT_REPO).folder / "trees").exists()


def test_a_file_whose_commit_is_unknown_is_not_published_but_warned_about(
    server: FaultServer, tmp_path: Path, opts: EnsureOptions
) -> None:
    """An upstream that names no commit (no X-Repo-Commit): there is no snapshots/<commit>
    to put the file in, and a made-up one would mislead huggingface_hub."""
    server.add(f"/{REPO}/resolve/main/config.json", Resource(CONFIG))
    hub = tmp_path / "hub"
    events: list[ProgressEvent] = []
    entry = ensure(f"hf://{REPO}/config.json", opts, hf_endpoint=server.url(""),
                   hf_cache=hub, progress=events.append)  # fmt: skip
    assert entry.path.read_bytes() == CONFIG and entry.commit is None
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "commit" in warnings[0] and "not published" in warnings[0]
    assert not HubCacheRepo(hub, REPO).folder.exists()
