"""The part file and its checkpoint on disk: paths, reading, writing and discarding.

The rules about what a checkpoint may claim live in core/resume.py; this is their I/O.
"""

from __future__ import annotations

from pathlib import Path

from ..core.resume import (
    MAX_PART_STATE,
    PART_STATE_SUFFIX,
    PART_SUFFIX,
    PartState,
    parse_part_state,
    part_state_json,
)
from ..fsutil import atomic_write_bytes, fsync_dir, lstat_regular, read_regular_file, unlink_quiet

__all__ = [
    "PART_STATE_SUFFIX",
    "PART_SUFFIX",
    "discard_part",
    "load_part_state",
    "part_paths",
    "part_size",
    "save_part_state",
]


def part_paths(entry_dir: Path, file_name: str) -> tuple[Path, Path]:
    return entry_dir / (file_name + PART_SUFFIX), entry_dir / (file_name + PART_STATE_SUFFIX)


def part_size(part: Path) -> int | None:
    """The part's size, or None when no regular file is there."""
    st = lstat_regular(part)
    return None if st is None else st.st_size


def load_part_state(path: Path, cache_key: str) -> PartState | None:
    """Read a part sidecar; anything odd means 'no usable state' (never an exception)."""
    try:
        data = read_regular_file(path, MAX_PART_STATE)
    except OSError:
        return None
    return parse_part_state(data, cache_key)


def save_part_state(path: Path, state: PartState) -> None:
    atomic_write_bytes(path, part_state_json(state))


def discard_part(entry_dir: Path, file_name: str) -> None:
    """Remove a part and its checkpoint: the checkpoint first, durably, so a crash in
    between leaves a part nobody trusts rather than a checkpoint without its bytes."""
    part, state = part_paths(entry_dir, file_name)
    if unlink_quiet(state):
        fsync_dir(entry_dir)
    unlink_quiet(part)
