"""A cache entry whose sidecar is damaged is rebuilt from the intact file without any network
request; a file whose bytes disagree is deleted and never served."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import CacheMissError, EnsureOptions, ModelSource, ensure
from modelfetch.cache import Cache
from modelfetch.core.sidecar import MetadataError, parse_metadata
from modelfetch.fsutil import sha256_file

from .conftest import sha256_of


def _download(server: FaultServer, opts: EnsureOptions, blob: bytes) -> tuple[str, Path]:
    url = server.add("/r/model.gguf", Resource(blob))
    entry = ensure(url, opts)
    return url, entry.directory


def _requests(server: FaultServer) -> int:
    return len(server.log)


HOSTILE_SIDECARS: dict[str, bytes] = {
    "empty": b"",
    "truncated": b'{"schema_version": 1, "sha256": "ab',
    "not-json": b"\x89PNG\r\n\x1a\n",
    "not-utf8": b'{"schema_version": 1, "source": "\xff\xfe"}',
    "utf16": json.dumps({"schema_version": 1}).encode("utf-16"),
    "array": b"[1, 2, 3]",
    "unknown-version": b'{"schema_version": 2}',
    "string-version": b'{"schema_version": "1"}',
    "bool-version": b'{"schema_version": true}',
    "huge-int": b'{"schema_version": 1, "bytes": ' + b"9" * 5000 + b"}",
    "huge-float": b'{"schema_version": 1, "bytes": 1e999}',
    "deep-nesting": b"[" * 100_000 + b"]" * 100_000,
    "over-64k": b'{"schema_version": 1, "source": "' + b"a" * 70_000 + b'"}',
}


def _valid_doc(entry_dir: Path) -> dict[str, object]:
    return json.loads((entry_dir / "metadata.json").read_text())


FIELD_ATTACKS: dict[str, tuple[str, object]] = {
    "escape-parent": ("file_path", "../../../etc/passwd"),
    "absolute": ("file_path", "/etc/passwd"),
    "nested": ("file_path", "sub/model.gguf"),
    "points-at-part": ("file_path", "model.gguf.part"),
    "points-at-sidecar": ("file_path", "metadata.json"),
    "bytes-bool": ("bytes", True),
    "bytes-negative": ("bytes", -1),
    "bytes-absurd": ("bytes", 2**70),
    "sha-upper": ("sha256", "A" * 64),
    "sha-short": ("sha256", "ab"),
    "kind-odd": ("source_kind", "ftp"),
    "stamp-odd": ("stamp", [1, 2]),
    "time-odd": ("created_at", "yesterday"),
    "git-sha1-upper": ("git_sha1", "A" * 40),
    "git-sha1-sha256": ("git_sha1", "a" * 64),
    "git-sha1-number": ("git_sha1", 5),
}


@pytest.mark.parametrize("name", sorted(HOSTILE_SIDECARS))
def test_hostile_sidecar_is_rebuilt_offline(
    name: str, server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url, entry_dir = _download(server, opts, blob)
    (entry_dir / "metadata.json").write_bytes(HOSTILE_SIDECARS[name])
    before = _requests(server)
    entry = ensure(url, opts, policy="cache_only")
    assert _requests(server) == before  # zero network requests
    assert entry.sha256 == blob_sha and sha256_of(entry.path) == blob_sha
    assert parse_metadata((entry_dir / "metadata.json").read_bytes()).sha256 == blob_sha


@pytest.mark.parametrize("name", sorted(FIELD_ATTACKS))
def test_bad_sidecar_fields_are_rejected_and_rebuilt(
    name: str, server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url, entry_dir = _download(server, opts, blob)
    doc = _valid_doc(entry_dir)
    key, value = FIELD_ATTACKS[name]
    doc[key] = value
    raw = json.dumps(doc).encode()
    with pytest.raises(MetadataError):
        parse_metadata(raw)
    (entry_dir / "metadata.json").write_bytes(raw)
    before = _requests(server)
    entry = ensure(url, opts, policy="cache_only")
    assert _requests(server) == before
    assert entry.path == entry_dir / "model.gguf" and entry.sha256 == blob_sha
    assert Path("/etc/passwd").exists()  # nothing outside the entry was touched


@pytest.mark.parametrize(
    "field, value",
    [
        ("cache_key", "0" * 64),  # well-formed, but names some other source
        ("file_name", "other.gguf"),
        ("file_path", "other.gguf"),
        ("source_kind", "path"),
        ("transient", True),
    ],
)
def test_sidecar_of_another_entry_is_a_miss(
    field: str,
    value: object,
    server: FaultServer,
    opts: EnsureOptions,
    blob: bytes,
    blob_sha: str,
) -> None:
    """The seed's rule: a sidecar that belongs to another source is a miss (file and
    sidecar deleted), not a sidecar to rebuild as if it were missing."""
    url, entry_dir = _download(server, opts, blob)
    doc = _valid_doc(entry_dir)
    doc[field] = value
    (entry_dir / "metadata.json").write_text(json.dumps(doc))
    before = _requests(server)
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    assert _requests(server) == before
    assert not (entry_dir / "model.gguf").exists()
    assert not (entry_dir / "metadata.json").exists()
    entry = ensure(url, opts)  # a normal call downloads again
    assert _requests(server) == before + 1
    assert entry.cache_key == ModelSource.parse(url).cache_key and entry.sha256 == blob_sha


def test_missing_sidecar_rebuilt_and_checked_against_caller_sha(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url, entry_dir = _download(server, opts, blob)
    (entry_dir / "metadata.json").unlink()
    before = _requests(server)
    entry = ensure(url, opts, policy="cache_only", sha256=blob_sha)
    assert _requests(server) == before and entry.sha256 == blob_sha
    (entry_dir / "metadata.json").unlink()
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only", sha256="0" * 64)
    assert not (entry_dir / "model.gguf").exists()  # a file that does not match is deleted


def test_sidecar_symlink_is_not_followed(
    server: FaultServer, opts: EnsureOptions, blob: bytes, tmp_path: Path
) -> None:
    url, entry_dir = _download(server, opts, blob)
    outside = tmp_path / "outside.json"
    outside.write_bytes((entry_dir / "metadata.json").read_bytes())
    (entry_dir / "metadata.json").unlink()
    (entry_dir / "metadata.json").symlink_to(outside)
    before = _requests(server)
    ensure(url, opts, policy="cache_only")
    assert _requests(server) == before
    assert not (entry_dir / "metadata.json").is_symlink()
    assert outside.read_bytes()  # the symlink target is untouched


def test_size_mismatch_deletes_and_counts_as_miss(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url, entry_dir = _download(server, opts, blob)
    with open(entry_dir / "model.gguf", "r+b") as fh:
        fh.truncate(1000)
    with pytest.raises(CacheMissError, match="not in the cache"):
        ensure(url, opts, policy="cache_only")
    assert not (entry_dir / "model.gguf").exists()
    assert not (entry_dir / "metadata.json").exists()
    before = _requests(server)
    entry = ensure(url, opts)  # prefer_cached re-downloads
    assert _requests(server) == before + 1 and sha256_of(entry.path) == blob_sha


def test_same_size_corruption_with_restored_mtime_is_caught(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    url, entry_dir = _download(server, opts, blob)
    path = entry_dir / "model.gguf"
    st = os.stat(path)
    with open(path, "r+b") as fh:
        fh.seek(1234)
        fh.write(bytes([blob[1234] ^ 0xFF]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime forged back; ctime cannot be
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    assert not path.exists()


def test_model_file_symlink_is_never_served(
    server: FaultServer, opts: EnsureOptions, blob: bytes, tmp_path: Path
) -> None:
    url, entry_dir = _download(server, opts, blob)
    outside = tmp_path / "secret.bin"
    outside.write_bytes(blob)
    (entry_dir / "model.gguf").unlink()
    (entry_dir / "model.gguf").symlink_to(outside)
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    assert outside.read_bytes() == blob  # the link went, its target stayed
    assert not (entry_dir / "model.gguf").is_symlink()


def test_entry_dir_symlink_out_of_cache_is_never_served(
    server: FaultServer, opts: EnsureOptions, blob: bytes, tmp_path: Path
) -> None:
    url, entry_dir = _download(server, opts, blob)
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(entry_dir, elsewhere)
    shutil.rmtree(entry_dir)
    entry_dir.symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    assert (elsewhere / "model.gguf").read_bytes() == blob
    entry = ensure(url, opts)
    assert entry.directory == entry_dir and not entry_dir.is_symlink()


def test_verified_hit_skips_rehash_until_file_changes(
    server: FaultServer,
    opts: EnsureOptions,
    blob: bytes,
    cache_dir: Path,
) -> None:
    """The steps of ensure(): the lock-free hit (stat stamp), else the verified lookup."""
    url, entry_dir = _download(server, opts, blob)
    calls: list[Path] = []

    def counting(path: Path) -> tuple[str, int, object]:
        calls.append(path)
        return sha256_file(path)

    cache = Cache(cache_dir, hash_file=counting)
    src = ModelSource.parse(url)

    def hit() -> object:
        return cache.lookup_fast(src, None) or cache.lookup_verified(src, None)

    for _ in range(3):
        assert hit() is not None
    assert calls == []
    os.utime(entry_dir / "model.gguf")  # stat stamp changes, content does not
    assert hit() is not None
    assert len(calls) == 1  # re-hashed once, found intact, stamp refreshed
    assert hit() is not None
    assert len(calls) == 1
    assert ensure(url, opts).path == entry_dir / "model.gguf"


def test_moving_the_cache_root_keeps_entries_valid(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str, tmp_path: Path
) -> None:
    url, _ = _download(server, opts, blob)
    moved = tmp_path / "moved-cache"
    os.rename(opts.cache_dir, moved)  # type: ignore[arg-type]
    before = _requests(server)
    entry = ensure(url, opts, cache_dir=moved, policy="cache_only")
    assert entry.path.is_relative_to(moved) and entry.sha256 == blob_sha
    copied = tmp_path / "copied-cache"
    shutil.copytree(moved, copied)  # new inodes: re-hashed once, still valid
    assert ensure(url, opts, cache_dir=copied, policy="cache_only").sha256 == blob_sha
    assert _requests(server) == before


def test_cache_only_on_empty_cache_makes_no_request_and_creates_nothing(
    server: FaultServer, opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    url = server.add("/r/model.gguf", Resource(blob))
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    assert server.log == [] and not cache_dir.exists()


def test_local_path_source_is_imported_and_verified(
    tmp_path: Path, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    src = tmp_path / "weights.safetensors"
    src.write_bytes(blob)
    entry = ensure(src, opts, sha256=blob_sha)
    assert entry.path.name == "weights.safetensors" and sha256_of(entry.path) == blob_sha
    assert entry.source_kind == "path"
    assert ensure(ModelSource.path(src), opts, policy="cache_only").path == entry.path
