"""Split GGUF models: one request for any shard brings every shard, side by side."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from modelfetch import Cache, CacheMissError, EnsureOptions, InvalidSourceError, ensure
from modelfetch.source import ModelSource

NAMES = [f"model-Q4_K_M-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]


@pytest.fixture
def shard_bytes() -> list[bytes]:
    return [random_bytes(300_000 + i, seed=40 + i) for i in range(3)]


@pytest.fixture
def shard_urls(server: FaultServer, shard_bytes: list[bytes]) -> list[str]:
    return [server.add(f"/split/{n}", Resource(b)) for n, b in zip(NAMES, shard_bytes, strict=True)]


def test_any_shard_brings_the_whole_set(
    shard_urls: list[str], shard_bytes: list[bytes], opts: EnsureOptions, cache_dir: Path
) -> None:
    entry = ensure(shard_urls[1], opts)  # ask for shard 2
    assert entry.path.read_bytes() == shard_bytes[1]
    assert entry.set_path is not None and entry.set_path.name == NAMES[0]
    folder = entry.set_path.parent
    assert sorted(os.listdir(folder)) == NAMES
    for name, data in zip(NAMES, shard_bytes, strict=True):
        link = folder / name
        assert link.is_symlink() and not os.path.isabs(os.readlink(link))  # relocatable
        assert link.read_bytes() == data
    assert len(Cache(cache_dir).list()) == 3
    # all cached now: cache-only works for the set, and removing a shard drops the set
    assert ensure(shard_urls[0], opts, policy="cache_only").set_path == entry.set_path
    Cache(cache_dir).remove(shard_urls[2])
    assert not folder.exists()
    with pytest.raises(CacheMissError):
        ensure(shard_urls[0], opts, policy="cache_only")


def test_moving_the_root_keeps_sets_working(
    shard_urls: list[str], shard_bytes: list[bytes], opts: EnsureOptions, tmp_path: Path
) -> None:
    entry = ensure(shard_urls[0], opts)
    moved = tmp_path / "moved"
    os.rename(opts.cache_dir, moved)  # type: ignore[arg-type]
    again = ensure(shard_urls[0], opts, cache_dir=moved, policy="cache_only")
    assert again.set_path is not None and again.set_path.read_bytes() == shard_bytes[0]
    assert entry.set_path is not None and not entry.set_path.exists()


def test_hf_shards_resolve_in_the_same_folder(
    hub: HubEmulator, hub_opts: EnsureOptions, shard_bytes: list[bytes]
) -> None:
    commit = hub.create_repo("o/r", {f"q4/{n}": b for n, b in zip(NAMES, shard_bytes, strict=True)})
    entry = ensure(f"hf://o/r/q4/{NAMES[2]}", hub_opts)
    assert entry.set_path is not None
    assert [p.read_bytes() for p in sorted(entry.set_path.parent.iterdir())] == shard_bytes
    assert entry.commit == commit


def test_single_shard_when_asked(
    shard_urls: list[str], opts: EnsureOptions, server: FaultServer
) -> None:
    entry = ensure(shard_urls[1], opts, shards=False)
    assert entry.set_path is None
    assert [r.path for r in server.log if r.method == "GET"] == [f"/split/{NAMES[1]}"]


@pytest.mark.parametrize(
    "name", ["m-00004-of-00003.gguf", "m-00000-of-00003.gguf", "m-00001-of-09999.gguf"]
)
def test_impossible_shard_names_are_refused(name: str, opts: EnsureOptions) -> None:
    with pytest.raises(InvalidSourceError):
        ensure(ModelSource.url(f"http://127.0.0.1:9/{name}"), opts)


def test_pinned_sha_with_a_split_model_is_refused(
    shard_urls: list[str], opts: EnsureOptions
) -> None:
    with pytest.raises(InvalidSourceError, match="split model"):
        ensure(shard_urls[0], opts, sha256="a" * 64)
