"""An entry's ``metadata.json`` on disk: read it, write it, stamp it with the clock.

The schema and its hostile-input reader are pure (core/sidecar.py); this is their I/O.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from ..core.sidecar import (
    MAX_METADATA_BYTES,
    METADATA_NAME,
    EntryMetadata,
    MetadataError,
    format_timestamp,
    parse_metadata,
    sidecar_bytes,
)
from ..fsutil import atomic_write_bytes, read_regular_file


def utc_now() -> str:
    return format_timestamp(datetime.now(timezone.utc))


def read_metadata(entry_dir: Path) -> EntryMetadata:
    """Read and validate an entry's sidecar; raise MetadataError for anything untrustworthy."""
    try:
        data = read_regular_file(entry_dir / METADATA_NAME, MAX_METADATA_BYTES)
    except FileNotFoundError:
        raise MetadataError("missing") from None
    except OSError as exc:
        raise MetadataError(f"unreadable ({exc.strerror or exc})") from None
    return parse_metadata(data)


def write_metadata(entry_dir: Path, meta: EntryMetadata) -> EntryMetadata:
    """Write the sidecar and return what was stored."""
    stored, data = sidecar_bytes(meta)
    atomic_write_bytes(entry_dir / METADATA_NAME, data)
    return stored
