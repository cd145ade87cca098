"""The ``metadata.json`` sidecar schema (version 1) and its hostile-input reader.

A sidecar is advisory: the model file is the truth. Any sidecar that is missing, not JSON,
of an unknown version, of the wrong types, or pointing outside its entry directory is
reported as :class:`MetadataError`, and the cache rebuilds it from the intact file.

Schema version 1 (all keys required unless marked optional)::

    schema_version  1
    source          redacted source (no userinfo, query or fragment)
    source_kind     "path" | "url" | "hf"
    cache_key       64 lowercase hex chars, SHA-256 of the source's canonical identity
    file_name       the model file's name
    file_path       path of the model file relative to the entry directory (one segment)
    bytes           size in bytes (``size`` in code: EntryRecord)
    sha256          64 lowercase hex chars
    etag            optional string, the origin's ETag when downloaded (at most 1024
                    characters, no control characters; a longer one is not stored)
    last_modified   optional string, the origin's Last-Modified when downloaded (same bound)
    created_at      ISO-8601 UTC timestamp
    updated_at      ISO-8601 UTC timestamp
    transient       bool, true for entries made by the no-cache policy
    stamp           optional {size, mtime_ns, ino, ctime_ns}: the file as it was when last
                    hashed; a hit whose stat matches it skips re-hashing
    commit          optional 40-hex commit a Hugging Face revision resolved to (added in
                    0.1 without a version bump: readers of version 1 ignore unknown keys)
    git_sha1        optional 40-hex git blob id of a git-stored (non-LFS) Hugging Face file,
                    recorded only when the content was verified against it (added without
                    a version bump, as ``commit`` was); the mirror answers with it as the
                    file's ETag, and the Hugging Face cache names the file's blob after it
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from typing import Any

SCHEMA_VERSION = 1
METADATA_NAME = "metadata.json"
MAX_METADATA_BYTES = 64 * 1024
MAX_SIZE = 2**62  # far beyond any real file; rejects absurd numbers before arithmetic
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_MAX_TEXT = 4096
# Validators are stored only when they are sane: a 50 KB ETag would make the sidecar one the
# reader rejects. Dropping one (never cutting it: a cut ETag is a wrong validator) only costs
# a refresh its conditional request.
MAX_VALIDATOR = 1024
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MetadataError(ValueError):
    """A sidecar that cannot be trusted; ``reason`` says why, for logs and `verify`."""


@dataclass(frozen=True)
class FileStamp:
    size: int
    mtime_ns: int
    ino: int
    ctime_ns: int

    @classmethod
    def of(cls, st: Any) -> FileStamp:
        return cls(st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


@dataclass(frozen=True)
class EntryRecord:
    """What is known of one file's content: declared once, shared by the sidecar
    (EntryMetadata), the cache's CacheEntry and a fetcher's FetchResult. ``size`` is the
    sidecar's ``bytes`` key."""

    sha256: str
    size: int
    etag: str | None = None  # the origin's validators when it was downloaded
    last_modified: str | None = None
    commit: str | None = None  # the hub commit a Hugging Face revision resolved to
    # A git-stored hub file's blob id, verified against the content (None for LFS files
    # and other sources): its ETag on the hub, its blob name in the hub cache.
    git_sha1: str | None = None


@dataclass(frozen=True, kw_only=True)
class EntryMetadata(EntryRecord):
    """An entry's sidecar: its EntryRecord and where the file came from and lies."""

    source: str
    source_kind: str
    cache_key: str
    file_name: str
    file_path: str
    created_at: str
    updated_at: str
    transient: bool = False
    stamp: FileStamp | None = None

    def to_json(self) -> bytes:
        fields = asdict(self)
        fields["bytes"] = fields.pop("size")  # schema v1's name for it
        body: dict[str, Any] = {"schema_version": SCHEMA_VERSION, **fields}
        return (json.dumps(body, indent=2, sort_keys=True) + "\n").encode("utf-8")

    def with_stamp(self, stamp: FileStamp | None, now: str) -> EntryMetadata:
        return replace(self, stamp=stamp, updated_at=now)


def format_timestamp(when: datetime) -> str:
    """The sidecar's timestamp form: ISO-8601 UTC with milliseconds and a ``Z``."""
    utc = when.astimezone(timezone.utc)
    return utc.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_timestamp(value: str) -> datetime:
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _text(doc: dict[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or len(value) > _MAX_TEXT:
        raise MetadataError(f"field {key!r} must be a string of at most {_MAX_TEXT} characters")
    return value


def _int(doc: dict[str, Any], key: str) -> int:
    value = doc.get(key)
    # bool is an int subclass in Python; a sidecar saying "bytes": true is corrupt.
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_SIZE:
        raise MetadataError(f"field {key!r} must be an integer between 0 and {MAX_SIZE}")
    return value


def _stamp(value: Any) -> FileStamp | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MetadataError("field 'stamp' must be an object")
    return FileStamp(
        size=_int(value, "size"),
        mtime_ns=_int(value, "mtime_ns"),
        ino=_int(value, "ino"),
        ctime_ns=_int(value, "ctime_ns"),
    )


def _hex40(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _COMMIT.match(value):
        raise MetadataError(f"field {key!r} must be 40 lowercase hex characters")
    return value


def validate_relative_name(value: str) -> str:
    """A file name inside an entry directory: one plain segment, no traversal."""
    if (
        not value
        or value in (".", "..")
        or "/" in value
        or "\\" in value
        or "\x00" in value
        or value == METADATA_NAME
        or value.endswith((".part", ".part.json"))
    ):
        raise MetadataError("field 'file_path' must be a single plain file name in the entry")
    return value


def parse_metadata(data: bytes) -> EntryMetadata:
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and Python's int-digits limit for huge numbers.
        raise MetadataError(f"not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise MetadataError("top level must be a JSON object")
    version = doc.get("schema_version")
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise MetadataError(f"unknown schema_version {str(version)[:20]!r}")
    sha = _text(doc, "sha256")
    key = _text(doc, "cache_key")
    if not sha or not _HEX64.match(sha):
        raise MetadataError("field 'sha256' must be 64 lowercase hex characters")
    if not key or not _HEX64.match(key):
        raise MetadataError("field 'cache_key' must be 64 lowercase hex characters")
    kind = _text(doc, "source_kind")
    if kind not in ("path", "url", "hf"):
        raise MetadataError("field 'source_kind' must be path, url or hf")
    transient = doc.get("transient", False)
    if not isinstance(transient, bool):
        raise MetadataError("field 'transient' must be a boolean")
    created = _text(doc, "created_at") or ""
    updated = _text(doc, "updated_at") or ""
    for stamp_text in (created, updated):
        try:
            parse_timestamp(stamp_text)
        except ValueError:
            raise MetadataError("timestamps must be ISO-8601") from None
    return EntryMetadata(
        source=_text(doc, "source") or "",
        source_kind=kind,
        cache_key=key,
        file_name=_text(doc, "file_name") or "",
        file_path=validate_relative_name(_text(doc, "file_path") or ""),
        size=_int(doc, "bytes"),
        sha256=sha,
        created_at=created,
        updated_at=updated,
        etag=_text(doc, "etag", optional=True),
        last_modified=_text(doc, "last_modified", optional=True),
        transient=transient,
        stamp=_stamp(doc.get("stamp")),
        commit=_hex40(doc.get("commit"), "commit"),
        git_sha1=_hex40(doc.get("git_sha1"), "git_sha1"),
    )


def storable_validator(value: str | None) -> str | None:
    """A validator (ETag, Last-Modified) as we may store and send it back, or None."""
    if value is None or len(value) > MAX_VALIDATOR or _CONTROL.search(value):
        return None
    return value


def bounded(meta: EntryMetadata) -> EntryMetadata:
    """``meta`` within what the reader accepts: absurd validators dropped, an over-long
    (display-only) source shortened."""
    source = meta.source
    if len(source) > _MAX_TEXT:
        source = source[: _MAX_TEXT - 3] + "..."
    return replace(
        meta,
        source=source,
        etag=storable_validator(meta.etag),
        last_modified=storable_validator(meta.last_modified),
    )


def sidecar_bytes(meta: EntryMetadata) -> tuple[EntryMetadata, bytes]:
    """What to store for ``meta`` and its bytes: only a sidecar that reads back as written
    ever reaches the disk (MetadataError otherwise)."""
    stored = bounded(meta)
    data = stored.to_json()
    if len(data) > MAX_METADATA_BYTES:
        raise MetadataError(f"sidecar would exceed {MAX_METADATA_BYTES} bytes")
    parse_metadata(data)  # raises MetadataError for anything the reader would reject
    return stored, data
