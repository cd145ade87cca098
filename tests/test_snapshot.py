"""Whole repositories against the hub + CDN emulation: one commit, every file verified,
published only complete, resumable, and readable by the real huggingface_hub offline."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from modelfetch import (
    Cache,
    CacheMissError,
    DownloadError,
    EnsureOptions,
    IntegrityError,
    InvalidSourceError,
    ProgressEvent,
    snapshot,
    snapshot_async,
)
from modelfetch.budget import ConnectionBudget
from modelfetch.cache.sidecar import read_metadata
from modelfetch.core.sidecar import FileStamp
from modelfetch.snapshot import list_snapshots, verify_snapshots

REPO = "TheOrg/Tiny-LM"
SHARD1 = random_bytes(3_000_000, seed=41)
SHARD2 = random_bytes(1_200_000, seed=42)
INDEX = json.dumps(
    {
        "metadata": {"total_size": len(SHARD1) + len(SHARD2)},
        "weight_map": {
            "a.weight": "model-00001-of-00002.safetensors",
            "b.weight": "model-00002-of-00002.safetensors",
        },
    }
).encode()
FILES = {
    "config.json": b'{"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4}\n',
    "generation_config.json": b'{"do_sample": false}\n',
    "tokenizer.json": json.dumps({"vocab": list(range(2000))}).encode(),
    "model-00001-of-00002.safetensors": SHARD1,
    "model-00002-of-00002.safetensors": SHARD2,
    "model.safetensors.index.json": INDEX,
    "extra/notes.txt": b"hello\n",
    "extra/blob.bin": random_bytes(50_000, seed=43),
}
LFS = {p for p in FILES if p.endswith((".safetensors", ".bin"))}


@pytest.fixture
def emu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[HubEmulator]:
    with HubEmulator(page_size=3) as e:
        e.create_repo(REPO, FILES)
        monkeypatch.setenv("HF_ENDPOINT", e.endpoint)
        monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "untouched-hub-cache"))
        for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MODELFETCH_OFFLINE", "MODELFETCH_HF_CACHE"):
            monkeypatch.delenv(name, raising=False)
        yield e


def main_commit(emu: HubEmulator) -> str:
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    return commit.oid


def tree_of(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for name in names:
            full = Path(dirpath) / name
            out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def resolves(emu: HubEmulator) -> list[str]:
    return [r.path for r in emu.hub.requests() if "/resolve/" in r.path]


def test_a_whole_repository_at_one_commit_every_file_verified(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    commit = main_commit(emu)
    events: list[ProgressEvent] = []
    snap = snapshot(f"hf://{REPO}", options=opts, progress=events.append)
    assert snap.commit == commit and snap.revision == "main"
    assert (
        snap.path == Path(opts.cache_dir or "").resolve() / "snapshots" / "TheOrg--Tiny-LM" / commit
    )
    assert tree_of(snap.path) == FILES
    assert {f.path: f.lfs for f in snap.files} == {p: p in LFS for p in FILES}
    assert all(f.status == "downloaded" for f in snap.files)
    for f in snap.files:
        assert f.sha256 == hashlib.sha256(FILES[f.path]).hexdigest()
        assert f.local_path.read_bytes() == FILES[f.path]
        link = snap.path / f.path
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))
        assert os.path.samefile(link, f.local_path)  # an ordinary entry, linked
    # one revision lookup, the tree listed once (paginated), every file at the commit
    assert len(emu.hub.requests("GET", f"/api/models/{REPO}/revision/main")) == 1
    pages = emu.hub.requests("GET", f"/api/models/{REPO}/tree/{commit}")
    assert len(pages) == 3  # 8 files and 1 folder, 3 per page
    assert resolves(emu) and all(f"/resolve/{commit}/" in p for p in resolves(emu))
    # the LFS files came from the CDN, verified against the tree's SHA-256
    assert len(emu.cdn.requests("GET")) == len(LFS)
    # one aggregate stream of progress: bytes and files
    last = events[-1]
    assert last.kind == "done" and (last.files_done, last.files_total) == (8, 8)
    assert last.bytes_done == last.bytes_total == sum(len(d) for d in FILES.values())

    before = len(emu.hub.log) + len(emu.cdn.log)
    again = snapshot(f"hf://{REPO}", options=opts)
    assert again.path == snap.path and all(f.status == "cached" for f in again.files)
    assert len(emu.hub.log) + len(emu.cdn.log) == before  # a repeat makes no request at all


def test_include_and_exclude_select_like_huggingface_hub(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    snap = snapshot(
        f"hf://{REPO}", include=["*.json", "extra/"], exclude="generation_*", options=opts
    )
    assert sorted(tree_of(snap.path)) == [
        "config.json",
        "extra/blob.bin",
        "extra/notes.txt",
        "model.safetensors.index.json",
        "tokenizer.json",
    ]
    assert emu.cdn.requests("GET", "") and len(emu.cdn.requests("GET")) == 1  # extra/blob.bin
    # a later, larger selection at the same commit adds to the same snapshot directory
    more = snapshot(f"hf://{REPO}", include="*.safetensors", options=opts)
    assert more.path == snap.path and len(tree_of(more.path)) == 7
    with pytest.raises(InvalidSourceError, match="no file"):
        snapshot(f"hf://{REPO}", include="*.gguf", options=opts)


def test_an_outage_of_one_file_publishes_nothing_and_a_rerun_fetches_only_the_rest(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path
) -> None:
    hub_cache = tmp_path / "hub"
    broken = hashlib.sha256(SHARD1).hexdigest()
    emu.cdn.faults.path_contains = broken
    emu.cdn.faults.fail(503, times=100)
    with pytest.raises(DownloadError, match="1 of 8 files failed"):
        snapshot(f"hf://{REPO}", options=opts, max_retries=1, hf_cache=hub_cache)
    root = Path(opts.cache_dir or "")
    assert list(Cache(root).list()) and not list((root / "snapshots").glob("*/*"))
    hf_repo = hub_cache / "models--TheOrg--Tiny-LM"
    assert not (hf_repo / "snapshots").exists() or not any((hf_repo / "snapshots").iterdir())
    assert not (hf_repo / "refs" / "main").exists()

    emu.cdn.faults.fail_statuses.clear()
    emu.hub.log.clear()
    emu.cdn.log.clear()
    snap = snapshot(f"hf://{REPO}", options=opts, hf_cache=hub_cache)
    assert tree_of(snap.path) == FILES
    assert [f.path for f in snap.files if f.status == "downloaded"] == [
        "model-00001-of-00002.safetensors"
    ]
    assert {r.path.split("?")[0].rsplit("/", 1)[-1] for r in emu.cdn.requests("GET")} == {broken}
    assert all("model-00001" in p for p in resolves(emu))  # nothing else asked again
    assert not emu.hub.requests("GET", "/api/")  # the commit and its tree were remembered
    assert (hf_repo / "refs" / "main").read_text() == snap.commit


def test_a_branch_that_moves_mid_download_changes_nothing(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    first = main_commit(emu)
    moved = threading.Event()

    def move_once(event: ProgressEvent) -> None:
        if event.kind == "progress" and event.bytes_done > 0 and not moved.is_set():
            moved.set()
            emu.push(REPO, {p: b"new " + d[:100] for p, d in FILES.items()})

    snap = snapshot(f"hf://{REPO}", options=opts, parallel_files=1, progress=move_once)
    assert moved.is_set() and main_commit(emu) != first
    assert snap.commit == first and tree_of(snap.path) == FILES
    assert all(e.commit == first for e in Cache(opts.cache_dir).list())


def test_a_missing_shard_is_an_error_and_a_left_out_one_a_warning(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    events: list[ProgressEvent] = []
    snapshot(f"hf://{REPO}", include="*.json", options=opts, progress=events.append)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert len(warnings) == 1 and "model.safetensors.index.json needs 2 file(s)" in warnings[0]

    emu.push(REPO, {"model-00002-of-00002.safetensors": None})  # the index still names it
    with pytest.raises(IntegrityError, match="does not have"):
        snapshot(f"hf://{REPO}", options=opts, policy="refresh")
    commit = main_commit(emu)
    assert not (Path(opts.cache_dir or "") / "snapshots" / "TheOrg--Tiny-LM" / commit).exists()


def test_a_git_file_whose_content_does_not_hash_to_its_blob_id_is_refused(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    # what the tree lists and what the hub then serves disagree (a corrupting proxy)
    real = commit.files["config.json"]
    object.__setattr__(real, "data", b'{"model_type": "evil", "hidden_size": 64, "x": 1}\n')
    with pytest.raises(IntegrityError, match="git blob SHA-1 mismatch"):
        snapshot(f"hf://{REPO}", include="config.json", options=opts)
    assert Cache(opts.cache_dir).list() == []


def test_offline_repeat_and_offline_from_the_huggingface_cache(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snap = snapshot(f"hf://{REPO}", options=opts)
    emu.hub.log.clear()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert snapshot(f"hf://{REPO}", options=opts).path == snap.path
    assert emu.hub.log == []
    with pytest.raises(CacheMissError):
        snapshot(f"hf://{REPO}@v2", options=opts)

    # a fresh modelfetch cache, a hub cache filled by huggingface_hub: adopted, offline
    monkeypatch.delenv("HF_HUB_OFFLINE")
    hub_cache = tmp_path / "hf-hub"
    hf_client(emu, hub_cache, f"from huggingface_hub import snapshot_download\n"
              f"print(snapshot_download({REPO!r}))")  # fmt: skip
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    fresh = opts.merged(cache_dir=tmp_path / "fresh")
    adopted = snapshot(f"hf://{REPO}", options=fresh, hf_cache=hub_cache)
    assert tree_of(adopted.path) == FILES and {f.status for f in adopted.files} == {"adopted"}
    for f in adopted.files:  # linked, not copied: one inode for both caches
        name = hashlib.sha256(FILES[f.path]).hexdigest() if f.lfs else f.blob_id
        blob = hub_cache / "models--TheOrg--Tiny-LM" / "blobs" / name
        assert os.stat(blob).st_ino == os.stat(f.local_path).st_ino


def hf_client(
    emu: HubEmulator,
    hub_cache: Path,
    code: str,
    offline: bool = False,
    extra_env: dict[str, str] | None = None,
) -> str:
    env = {
        **(extra_env or {}),
        **os.environ,
        "HF_ENDPOINT": emu.endpoint,
        "HF_HUB_CACHE": str(hub_cache),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
        "HF_HUB_DISABLE_PROGRESS_BARS": "1",
        "HF_HUB_OFFLINE": "1" if offline else "0",
    }
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_published_into_the_hf_cache_huggingface_hub_loads_it_offline(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path
) -> None:
    hub_cache = tmp_path / "hub"
    snap = snapshot(f"hf://{REPO}", options=opts, hf_cache=hub_cache)
    assert snap.hf_cache_path == hub_cache / "models--TheOrg--Tiny-LM" / "snapshots" / snap.commit
    for f in snap.files:  # hard-linked into the hub cache, and still a stamped, verified hit
        meta = read_metadata(f.local_path.parent)
        assert meta.stamp == FileStamp.of(os.lstat(f.local_path))
        assert os.lstat(f.local_path).st_nlink == 2
    emu.hub.log.clear()
    code = textwrap.dedent(f"""
        import json, os
        from huggingface_hub import hf_hub_download, snapshot_download
        root = snapshot_download({REPO!r})
        strict = snapshot_download({REPO!r}, local_files_only=True)
        files = {{}}
        for d, _, names in os.walk(root):
            for n in names:
                p = os.path.join(d, n)
                files[os.path.relpath(p, root)] = open(p, "rb").read().hex()
        one = open(hf_hub_download({REPO!r}, "config.json"), "rb").read().hex()
        print(json.dumps([root, strict, files, one]))
    """)
    root, strict, files, one = json.loads(hf_client(emu, hub_cache, code, offline=True))
    assert root == strict == str(snap.hf_cache_path)
    assert {k: bytes.fromhex(v) for k, v in files.items()} == FILES
    assert bytes.fromhex(one) == FILES["config.json"]
    assert emu.hub.log == []


def test_a_partial_selection_is_seen_as_incomplete_by_huggingface_hub(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path
) -> None:
    hub_cache = tmp_path / "hub"
    snapshot(f"hf://{REPO}", include="*.json", options=opts, hf_cache=hub_cache)
    code = textwrap.dedent(f"""
        import json
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import IncompleteSnapshotError
        ok = snapshot_download({REPO!r}, allow_patterns="*.json")
        try:
            snapshot_download({REPO!r})
            print(json.dumps([ok, "complete"]))
        except IncompleteSnapshotError as exc:
            print(json.dumps([ok, str(exc)]))
    """)
    ok, whole = json.loads(hf_client(emu, hub_cache, code, offline=True))
    assert ok.endswith(main_commit(emu))
    assert "incomplete" in whole and "model-00001-of-00002.safetensors" in whole


def test_the_connection_budget_is_shared_and_returned(
    emu: HubEmulator, opts: EnsureOptions
) -> None:
    big = {f"big-{i}.bin": random_bytes(20_000_000, seed=50 + i) for i in range(3)}
    emu.push(REPO, big)
    emu.cdn.rate = 8_000_000.0  # per connection: slow enough to want more connections
    budget = ConnectionBudget(2)
    snap = snapshot(
        f"hf://{REPO}", include="big-*", options=opts, connection_budget=budget, connections=8
    )
    assert tree_of(snap.path) == big
    assert budget.peak == 2  # extra connections were asked for, and never more than granted
    assert budget.in_use == 0  # every one handed back


def test_small_files_do_not_wait_behind_large_ones(emu: HubEmulator, opts: EnsureOptions) -> None:
    # Two big files that sort first by name; their CDN answers are held back until every
    # other file is done. Queued behind them, the small files would never get a worker.
    big = {
        "a-big.bin": random_bytes(4_000_000, seed=60),
        "b-big.bin": random_bytes(4_100_000, seed=61),
    }
    emu.push(REPO, big)
    held = {hashlib.sha256(d).hexdigest() for d in big.values()}
    released = threading.Event()

    def hold_big(request: Any) -> None:
        if request.method == "GET" and any(sha in request.path for sha in held):
            released.wait(30)  # bounded: a failing test still ends

    def on_progress(event: ProgressEvent) -> None:
        if (event.files_done or 0) >= len(FILES):
            released.set()

    emu.cdn.on_request = hold_big
    snap = snapshot(f"hf://{REPO}", options=opts, parallel_files=2, progress=on_progress)
    assert released.is_set() and tree_of(snap.path) == {**FILES, **big}
    # the big files were asked for only after every small one had arrived
    gets = [r.path for r in emu.cdn.requests("GET")]
    assert all(any(sha in p for sha in held) for p in gets[-2:])


def test_async_snapshot(emu: HubEmulator, opts: EnsureOptions) -> None:
    snap = asyncio.run(snapshot_async(f"hf://{REPO}", include="*.json", options=opts))
    assert sorted(tree_of(snap.path)) == sorted(p for p in FILES if p.endswith(".json"))


def test_ls_verify_and_rm_keep_snapshots_consistent(emu: HubEmulator, opts: EnsureOptions) -> None:
    snap = snapshot(f"hf://{REPO}", options=opts)
    cache = Cache(opts.cache_dir)
    [info] = list_snapshots(cache)
    assert (info.repo_id, info.commit, info.files, info.revisions) == (
        REPO,
        snap.commit,
        8,
        ("main",),
    )
    assert info.size == sum(len(d) for d in FILES.values())
    assert [r.ok for r in verify_snapshots(cache)] == [True]
    # a corrupt file: verify removes the entry, then the snapshot that needed it
    victim = next(f for f in snap.files if f.path == "model-00002-of-00002.safetensors")
    data = bytearray(victim.local_path.read_bytes())
    data[10] ^= 1
    victim.local_path.write_bytes(bytes(data))
    bad = [r for r in cache.verify() if not r.ok]
    assert len(bad) == 1 and not snap.path.exists() and list_snapshots(cache) == []
    # the rerun fetches only that file again
    emu.cdn.log.clear()
    again = snapshot(f"hf://{REPO}", options=opts)
    assert [f.path for f in again.files if f.status == "downloaded"] == [victim.path]
    # removing any entry takes the snapshot with it: it never points at nothing
    cache.remove(str(victim.local_path.parent.name))
    assert not again.path.exists()
    third = snapshot(f"hf://{REPO}", options=opts)
    report = cache.prune(max_bytes=len(SHARD1))  # LRU entries go, and so does the snapshot
    assert report.removed and not third.path.exists() and list_snapshots(cache) == []


def test_hostile_tree_paths_are_refused(emu: HubEmulator, opts: EnsureOptions) -> None:
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    files = dict(commit.files)
    files["../escape.txt"] = files["config.json"]
    object.__setattr__(commit, "files", files)
    with pytest.raises(DownloadError, match="unusable file entry"):
        snapshot(f"hf://{REPO}", options=opts)
    assert not (Path(opts.cache_dir or "") / "escape.txt").exists()


def test_repository_references() -> None:
    with pytest.raises(InvalidSourceError, match="names a file"):
        snapshot("hf://TheOrg/Tiny-LM/config.json")
    with pytest.raises(InvalidSourceError, match="names a file"):
        snapshot("hf://TheOrg/Tiny-LM:Q4_K_M")
    with pytest.raises(InvalidSourceError, match="one file"):
        snapshot("hf://TheOrg/Tiny-LM", sha256="0" * 64)


def wait_for(predicate: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_a_new_commit_downloads_only_what_changed(emu: HubEmulator, opts: EnsureOptions) -> None:
    old = snapshot(f"hf://{REPO}", options=opts)
    emu.push(REPO, {"config.json": b'{"model_type": "llama", "hidden_size": 16}\n'})
    emu.cdn.log.clear()
    new = snapshot(f"hf://{REPO}", options=opts, policy="refresh")
    assert new.commit != old.commit and new.path != old.path
    status = {f.path: f.status for f in new.files}
    assert status["config.json"] == "downloaded"
    assert {status[p] for p in LFS} == {"adopted"}  # same SHA-256: linked, not downloaded
    assert emu.cdn.requests("GET") == []
    before = {f.path: f.local_path for f in old.files}
    for f in new.files:
        if f.lfs:  # one inode for both commits' entries, each still a stamped hit
            assert os.stat(f.local_path).st_ino == os.stat(before[f.path]).st_ino
            assert read_metadata(f.local_path.parent).stamp == FileStamp.of(os.lstat(f.local_path))
            assert read_metadata(before[f.path].parent).stamp == FileStamp.of(
                os.lstat(before[f.path])
            )
    assert tree_of(old.path) == FILES  # the old snapshot is untouched
    assert len(list_snapshots(Cache(opts.cache_dir))) == 2


def test_hub_cache_on_another_filesystem_gets_copies(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another filesystem than the test's temporary dir")
    hub_cache = shm / f"modelfetch-test-{os.getpid()}-{tmp_path.name}"
    try:
        snap = snapshot(f"hf://{REPO}", include="*.safetensors", options=opts, hf_cache=hub_cache)
        assert snap.hf_cache_path is not None
        blobs = {p: snap.hf_cache_path / p for p in ("model-00001-of-00002.safetensors",)}
        inodes = {p: os.stat(b).st_ino for p, b in blobs.items()}
        for p, blob in blobs.items():
            assert blob.read_bytes() == FILES[p]
            assert os.stat(blob).st_ino != os.stat(snap.path / p).st_ino  # a copy
        snapshot(f"hf://{REPO}", include="*.safetensors", options=opts, hf_cache=hub_cache)
        assert {p: os.stat(b).st_ino for p, b in blobs.items()} == inodes  # kept, not recopied
        # and the other way: a fresh cache adopts from there by copying, verified
        fresh = snapshot(
            f"hf://{REPO}",
            include="*.safetensors",
            options=opts.merged(cache_dir=tmp_path / "fresh", policy="cache_only"),
            hf_cache=hub_cache,
        )
        assert {f.status for f in fresh.files} == {"adopted"} and tree_of(fresh.path) == {
            p: FILES[p] for p in LFS if p.endswith(".safetensors")
        }
    finally:
        shutil.rmtree(hub_cache, ignore_errors=True)


def test_transformers_loads_the_config_offline(
    emu: HubEmulator, opts: EnsureOptions, tmp_path: Path
) -> None:
    hub_cache = tmp_path / "hub"
    snap = snapshot(f"hf://{REPO}", options=opts, hf_cache=hub_cache)
    code = textwrap.dedent(f"""
        import json
        from transformers import AutoConfig
        by_id = AutoConfig.from_pretrained({REPO!r})  # found in the hub cache, offline
        by_dir = AutoConfig.from_pretrained({str(snap.path)!r})  # modelfetch's own snapshot
        print(json.dumps([[c.model_type, c.hidden_size] for c in (by_id, by_dir)]))
    """)
    env = {"TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    out = json.loads(hf_client(emu, hub_cache, code, offline=True, extra_env=env))
    assert out == [["llama", 64], ["llama", 64]]


def test_what_the_hub_names_must_agree_with_the_tree(emu: HubEmulator, opts: EnsureOptions) -> None:
    snapshot(f"hf://{REPO}", include="config.json", options=opts)  # the tree is now kept
    commit = emu.resolve(REPO, "main")
    assert commit is not None
    shard = commit.files["model-00002-of-00002.safetensors"]
    object.__setattr__(shard, "sha256", "0" * 64)  # the hub now names other content
    with pytest.raises(IntegrityError, match="pinned"):
        snapshot(f"hf://{REPO}", include="*.safetensors", options=opts)
    assert emu.cdn.requests("GET", "0" * 64) == []  # refused before downloading it
    object.__setattr__(commit.files["tokenizer.json"], "git_oid", "1" * 40)  # and for git
    with pytest.raises(IntegrityError, match="file list"):
        snapshot(f"hf://{REPO}", include="tokenizer.json", options=opts)


def test_a_split_gguf_needs_all_its_parts(emu: HubEmulator, opts: EnsureOptions) -> None:
    emu.push(REPO, {"gguf/m-Q4_K_M-00001-of-00002.gguf": random_bytes(1000, seed=90)})
    with pytest.raises(IntegrityError, match=r"m-Q4_K_M-00002-of-00002\.gguf"):
        snapshot(f"hf://{REPO}", include="gguf/", options=opts)
    emu.push(REPO, {"gguf/m-Q4_K_M-00002-of-00002.gguf": random_bytes(1000, seed=91)})
    snap = snapshot(f"hf://{REPO}", include="gguf/", options=opts, policy="refresh")
    assert sorted(tree_of(snap.path)) == [
        "gguf/m-Q4_K_M-00001-of-00002.gguf",
        "gguf/m-Q4_K_M-00002-of-00002.gguf",
    ]
