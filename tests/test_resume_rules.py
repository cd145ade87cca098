"""Resume rules against files and a real origin (the pure rules: tests/unit/test_resume.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import EnsureOptions, ModelSource, ensure
from modelfetch.cache.part import load_part_state

KEY = "a" * 64


def test_hostile_part_state_on_disk_means_no_state(tmp_path: Path) -> None:
    path = tmp_path / "m.part.json"
    path.write_bytes(b"\xff" * 10)
    assert load_part_state(path, KEY) is None
    (tmp_path / "dir.part.json").mkdir()
    assert load_part_state(tmp_path / "dir.part.json", KEY) is None
    assert load_part_state(tmp_path / "missing.part.json", KEY) is None


def test_corrupt_part_sidecar_restarts_download(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str, cache_dir: Path
) -> None:
    res = Resource(blob, drop_after=[800_000])
    url = server.add("/p/model.gguf", res)
    with pytest.raises(Exception):
        ensure(url, opts, max_retries=0)
    src = ModelSource.parse(url)
    (cache_dir / "entries" / src.entry_dir_name / "model.gguf.part.json").write_bytes(b"\x00{")
    assert ensure(url, opts).sha256 == blob_sha
    assert server.requests_for("/p/model.gguf")[-1].headers.get("Range") is None
