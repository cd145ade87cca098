"""The seed's recovery rules (llamadart PR #140), through the Python API and the CLI.

One invariant on every hit: the sidecar's bytes == its stat stamp's size == the file's size,
and its SHA-256 is the caller's pin when one is given. A sidecar whose bytes disagree, or
that belongs to another source, is a miss: file and sidecar are deleted. A stored SHA-256
that disagrees with the pin is never returned: the file is re-hashed and the sidecar
corrected if the file matches the pin, otherwise the entry is deleted.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import Cache, CacheMissError, EnsureOptions, ModelSource, ensure

from .hostile import run_cli

BLOB = random_bytes(300_000, seed=140)
SHA = hashlib.sha256(BLOB).hexdigest()


def _setup(server: FaultServer, root: Path) -> tuple[str, Path]:
    url = server.add("/seed/model.gguf", Resource(BLOB))
    entry = ensure(url, EnsureOptions(cache_dir=root))
    return url, entry.directory


def _edit(entry_dir: Path, **changes: object) -> None:
    path = entry_dir / "metadata.json"
    doc = json.loads(path.read_text())
    for key, value in changes.items():
        if key.startswith("stamp_"):
            doc["stamp"][key[len("stamp_") :]] = value
        else:
            doc[key] = value
    path.write_text(json.dumps(doc))


def _gets(server: FaultServer) -> int:
    return len(server.requests_for("/seed/model.gguf"))


BYTES_LIES = {
    "bytes-only": {"bytes": len(BLOB) - 1},  # the stamp still proves the file unchanged
    "bytes-and-stamp": {"bytes": len(BLOB) + 5, "stamp_size": len(BLOB) + 5},
    "bytes-zero": {"bytes": 0},
}


# -- rule 1: recorded bytes disagree with the file ----------------------------------------
@pytest.mark.parametrize("lie", sorted(BYTES_LIES))
def test_bytes_mismatch_is_a_miss_api(lie: str, server: FaultServer, tmp_path: Path) -> None:
    url, entry_dir = _setup(server, tmp_path / "c")
    _edit(entry_dir, **BYTES_LIES[lie])
    opts = EnsureOptions(cache_dir=tmp_path / "c")
    before = _gets(server)
    assert Cache(tmp_path / "c").get(url) is None
    assert not (entry_dir / "model.gguf").exists()
    assert not (entry_dir / "metadata.json").exists()
    with pytest.raises(CacheMissError):
        ensure(url, opts, policy="cache_only")
    entry = ensure(url, opts)
    assert _gets(server) == before + 1  # a normal call downloads again
    assert entry.bytes == len(BLOB) and entry.path.read_bytes() == BLOB


@pytest.mark.parametrize("lie", sorted(BYTES_LIES))
def test_bytes_mismatch_is_a_miss_cli(lie: str, server: FaultServer, tmp_path: Path) -> None:
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    _edit(entry_dir, **BYTES_LIES[lie])
    listed = run_cli(root, "ls", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []
    assert "1 corrupt entry not listed" in listed.stderr  # not silently dropped
    miss = run_cli(root, "get", url, "--cache-only", "-q")
    assert miss.returncode == 1 and "not in the cache" in miss.stderr
    assert not (entry_dir / "model.gguf").exists()
    assert not (entry_dir / "metadata.json").exists()
    before = _gets(server)
    got = run_cli(root, "get", url, "-q", "--json")
    assert got.returncode == 0 and json.loads(got.stdout)["bytes"] == len(BLOB)
    assert _gets(server) == before + 1
    assert [e["bytes"] for e in json.loads(run_cli(root, "ls", "--json").stdout)] == [len(BLOB)]


def test_verify_reports_bytes_mismatch(server: FaultServer, tmp_path: Path) -> None:
    root = tmp_path / "c"
    _, entry_dir = _setup(server, root)
    _edit(entry_dir, bytes=len(BLOB) - 1)
    proc = run_cli(root, "verify", "--json")
    assert proc.returncode == 1
    (result,) = json.loads(proc.stdout)
    assert result["ok"] is False and "size mismatch" in result["detail"]
    assert not (entry_dir / "model.gguf").exists()


# -- rule 2: a stored SHA-256 that is not the pin -----------------------------------------
def test_stored_hash_disagreeing_with_pin_is_corrected_api(
    server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    _edit(entry_dir, sha256="0" * 64)  # wrong, and the stamp still matches the file
    before = _gets(server)
    entry = ensure(url, EnsureOptions(cache_dir=root), sha256=SHA, policy="cache_only")
    assert entry.sha256 == SHA  # never the stored value
    assert json.loads((entry_dir / "metadata.json").read_text())["sha256"] == SHA
    assert Cache(root).get(url).sha256 == SHA  # type: ignore[union-attr]
    assert ensure(url, EnsureOptions(cache_dir=root)).sha256 == SHA
    assert _gets(server) == before  # the file matched the pin: no download


def test_stored_hash_disagreeing_with_pin_is_corrected_cli(
    server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    _edit(entry_dir, sha256="0" * 64)
    proc = run_cli(root, "get", url, "--sha256", SHA, "--cache-only", "--json", "-q")
    assert proc.returncode == 0 and json.loads(proc.stdout)["sha256"] == SHA
    assert [e["sha256"] for e in json.loads(run_cli(root, "ls", "--json").stdout)] == [SHA]


def test_file_not_matching_pin_is_deleted_and_downloaded_again(
    server: FaultServer, tmp_path: Path
) -> None:
    """Stored hash and stamp describe the file on disk, but the file is not the pinned one:
    delete it and treat it as a miss (API: cache-only fails, a normal call downloads)."""
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    model = entry_dir / "model.gguf"
    other = BLOB[::-1]
    model.write_bytes(other)
    st = os.lstat(model)
    _edit(
        entry_dir,
        sha256=hashlib.sha256(other).hexdigest(),
        stamp_mtime_ns=st.st_mtime_ns,
        stamp_ctime_ns=st.st_ctime_ns,
        stamp_ino=st.st_ino,
    )
    opts = EnsureOptions(cache_dir=root)
    with pytest.raises(CacheMissError):
        ensure(url, opts, sha256=SHA, policy="cache_only")
    assert not model.exists() and not (entry_dir / "metadata.json").exists()
    before = _gets(server)
    entry = ensure(url, opts, sha256=SHA)
    assert _gets(server) == before + 1 and entry.path.read_bytes() == BLOB


def test_file_not_matching_pin_cli(server: FaultServer, tmp_path: Path) -> None:
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    proc = run_cli(root, "get", url, "--sha256", "1" * 64, "--cache-only", "-q")
    assert proc.returncode == 1 and "not in the cache" in proc.stderr
    assert not (entry_dir / "model.gguf").exists()
    before = _gets(server)
    proc = run_cli(root, "get", url, "--sha256", SHA, "-q")
    assert proc.returncode == 0 and Path(proc.stdout.strip()).read_bytes() == BLOB
    assert _gets(server) == before + 1


# -- rule 3: a sidecar of another source ---------------------------------------------------
@pytest.mark.parametrize(
    "change",
    [{"cache_key": "0" * 64}, {"file_name": "other.gguf"}, {"source_kind": "hf"}],
    ids=["cache_key", "file_name", "source_kind"],
)
def test_foreign_sidecar_is_a_miss_cli(
    change: dict[str, object], server: FaultServer, tmp_path: Path
) -> None:
    root = tmp_path / "c"
    url, entry_dir = _setup(server, root)
    _edit(entry_dir, **change)
    if "source_kind" not in change:  # ls cannot know the kind without the source
        listed = run_cli(root, "ls", "--json")
        assert json.loads(listed.stdout) == [] and "corrupt" in listed.stderr
    miss = run_cli(root, "get", url, "--cache-only", "-q")
    assert miss.returncode == 1 and "not in the cache" in miss.stderr
    assert not (entry_dir / "model.gguf").exists()
    before = _gets(server)
    assert run_cli(root, "get", url, "-q").returncode == 0
    assert _gets(server) == before + 1
    (entry,) = Cache(root).list()
    assert entry.cache_key == ModelSource.parse(url).cache_key and entry.sha256 == SHA


def test_verify_removes_foreign_sidecar(server: FaultServer, tmp_path: Path) -> None:
    root = tmp_path / "c"
    _, entry_dir = _setup(server, root)
    _edit(entry_dir, cache_key="0" * 64)  # the sha256 still matches the file
    proc = run_cli(root, "verify")
    assert proc.returncode == 1 and "belongs to another entry" in proc.stdout
    assert not (entry_dir / "metadata.json").exists()
    results = Cache(root).verify()
    assert results == []  # nothing left that claims to be an entry
