"""One record for an entry's fields (core/sidecar.py EntryRecord): the sidecar, CacheEntry and
FetchResult all carry it; ``size`` in code, ``bytes`` in schema v1 and in ``to_dict``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from modelfetch.cache import CacheEntry
from modelfetch.core.sidecar import EntryMetadata, EntryRecord, parse_metadata
from modelfetch.fetch.base import FetchResult

SHA = "ab" * 32
RECORD = {
    "sha256": SHA,
    "size": 1234,
    "etag": '"e1"',
    "last_modified": None,
    "commit": "c" * 40,
    "git_sha1": None,
}
META = EntryMetadata(
    **RECORD,
    source="hf://o/r/m.gguf",
    source_kind="hf",
    cache_key="d" * 64,
    file_name="m.gguf",
    file_path="m.gguf",
    created_at="2024-01-01T00:00:00.000Z",
    updated_at="2024-01-01T00:00:00.000Z",
)


@pytest.mark.parametrize("record_type", [EntryMetadata, CacheEntry, FetchResult])
def test_every_entry_type_carries_the_one_record(record_type: type) -> None:
    assert issubclass(record_type, EntryRecord)
    names = {f.name for f in dataclasses.fields(record_type)}
    assert set(RECORD) <= names and "bytes" not in names


def test_sidecar_keeps_the_bytes_key_and_reads_back_as_size() -> None:
    doc = json.loads(META.to_json())
    assert doc["bytes"] == 1234 and "size" not in doc and doc["schema_version"] == 1
    assert parse_metadata(META.to_json()) == META


def test_cache_entry_has_size_and_keeps_bytes_for_compatibility() -> None:
    entry = CacheEntry.from_metadata(Path("/c/e"), META, last_used=1.0)
    assert {k: getattr(entry, k) for k in RECORD} == RECORD
    assert entry.bytes == entry.size == 1234
    as_dict = entry.to_dict()
    assert as_dict["bytes"] == as_dict["size"] == 1234
    assert as_dict["path"] == str(Path("/c/e/m.gguf"))


def test_unchanged_result_is_the_cached_record_with_the_new_commit() -> None:
    entry = CacheEntry.from_metadata(Path("/c/e"), META, last_used=1.0)
    result = FetchResult.unchanged(entry, commit="f" * 40)
    assert result.not_modified and (result.sha256, result.size) == (SHA, 1234)
    assert (result.etag, result.commit, result.git_sha1) == ('"e1"', "f" * 40, None)
