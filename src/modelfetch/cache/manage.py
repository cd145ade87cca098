"""Managing the whole cache: list, find, remove, clear, prune and verify entries.

Cache is the public class: EntryStore (store.py) handles one entry at a time (lookup,
repair, promotion); this adds the operations over every entry, with the same rules (only
directories whose names match our pattern are ever deleted).
"""

from __future__ import annotations

import builtins
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..core.sidecar import EntryMetadata, MetadataError
from ..errors import (
    ReadOnlyCacheError,
)
from ..fsutil import (
    content_digests,
    fsync_dir,
    is_directory,
    lstat_regular,
    remove_any,
)
from ..source import ModelSource
from .part import PART_STATE_SUFFIX, PART_SUFFIX
from .sets import prune_sets
from .sidecar import read_metadata
from .snapdir import prune_snapshots
from .store import ENTRY_NAME, TRANSIENT_NAME, CacheEntry, EntryStore, read_sidecar


@dataclass(frozen=True)
class VerifyResult:
    directory: Path
    ok: bool
    detail: str
    entry: CacheEntry | None = None


@dataclass
class PruneReport:
    removed: builtins.list[CacheEntry] = field(default_factory=list)
    freed_bytes: int = 0
    parts_removed: int = 0
    busy_skipped: int = 0


class Cache(EntryStore):
    """The cache under ``root``: one entry at a time (EntryStore) and all of them."""

    # -- management ---------------------------------------------------------------------
    def _entry_paths(self) -> Iterator[Path]:
        """Every name in entries/ and transient/ that matches our pattern, of any type."""
        if not self.layout.check():
            return
        for parent, pattern in (
            (self.entries_dir, ENTRY_NAME),
            (self.transient_dir, TRANSIENT_NAME),
        ):
            if not is_directory(parent):
                continue
            try:
                names = sorted(os.listdir(parent))
            except OSError:
                continue
            for name in names:
                if pattern.match(name):
                    yield parent / name

    def _entry_dirs(self) -> Iterator[Path]:
        return (p for p in self._entry_paths() if is_directory(p))

    def _load(self, directory: Path) -> CacheEntry | None:
        """An entry as listed: sidecar valid, in its own directory, file of recorded size."""
        meta = read_sidecar(directory)
        if meta is None or not self._fits(directory, meta):
            return None
        st = lstat_regular(directory / meta.file_path)
        if st is None or st.st_size != meta.size:
            return None
        try:
            last_used = os.lstat(directory).st_mtime
        except OSError:
            return None
        return CacheEntry.from_metadata(directory, meta, last_used)

    def scan(self) -> tuple[builtins.list[CacheEntry], builtins.list[Path]]:
        """(every readable entry, every entry directory that is corrupt). A directory that
        holds only a partial download is neither."""
        entries: builtins.list[CacheEntry] = []
        corrupt: builtins.list[Path] = []
        for directory in self._entry_dirs():
            entry = self._load(directory)
            if entry is not None:
                entries.append(entry)
            elif self._has_content(directory):
                corrupt.append(directory)
        return entries, corrupt

    @staticmethod
    def _has_content(directory: Path) -> bool:
        try:
            names = os.listdir(directory)
        except OSError:
            return True
        return any(not n.endswith((PART_SUFFIX, PART_STATE_SUFFIX)) for n in names)

    def list(self) -> builtins.list[CacheEntry]:
        """Every readable entry; corrupt ones are skipped, not fatal."""
        return self.scan()[0]

    def find(self, ref: str | ModelSource) -> builtins.list[CacheEntry]:
        """Entries named by a source, a cache-key prefix (>= 6 hex chars) or a dir name."""
        if isinstance(ref, ModelSource):
            key = ref.cache_key
            return [e for e in self.list() if e.cache_key == key]
        text = ref.strip()
        if re.fullmatch(r"[0-9a-f]{6,64}", text):
            found = [e for e in self.list() if e.cache_key.startswith(text)]
            if found:
                return found
        by_dir = [e for e in self.list() if e.directory.name == text]
        if by_dir:
            return by_dir
        src = ModelSource.parse(text)
        return [e for e in self.list() if e.cache_key == src.cache_key]

    def _remove_dir(self, directory: Path) -> bool:
        """Delete an entry directory if nobody is writing it. True if it is gone."""
        if not is_directory(directory):
            return False
        with self.lock(directory).try_hold() as got:
            if not got:
                return False
            with self._writing(directory):
                remove_any(directory)
            fsync_dir(directory.parent)
            return not os.path.lexists(directory)

    def remove(self, ref: str | ModelSource) -> builtins.list[CacheEntry]:
        """Remove the matching entries (and, for a source, its corrupt or partial leftovers)."""
        self.layout.writable()
        removed = [e for e in self.find(ref) if self._remove_dir(e.directory)]
        if isinstance(ref, ModelSource):
            self._remove_dir(self.entry_dir(ref))
        prune_sets(self.layout)
        prune_snapshots(self.layout)
        return removed

    def clear(self) -> tuple[int, int]:
        """Remove every entry of ours, corrupt ones included. Returns (removed, busy)."""
        self.layout.writable()
        removed = busy = 0
        for path in list(self._entry_paths()):
            if not is_directory(path):
                with self._writing(path):
                    remove_any(path)  # a link or file squatting on an entry name
            elif self._remove_dir(path):
                removed += 1
            else:
                busy += 1
        prune_sets(self.layout, remove_all=busy == 0)
        prune_snapshots(self.layout, remove_all=busy == 0)
        return removed, busy

    def prune(
        self,
        max_age: float | None = None,
        max_bytes: int | None = None,
        *,
        dry_run: bool = False,
        now: float | None = None,
        keep: Callable[[CacheEntry], bool] | None = None,
    ) -> PruneReport:
        """Remove parts of dead downloads, entries unused for ``max_age`` seconds, then the
        least recently used entries until the total is at most ``max_bytes``. Entries for
        which ``keep`` says True (in use: the mirror serving them) stay, counted as busy."""
        if not dry_run:
            self.layout.writable()
        report = PruneReport()
        now = time.time() if now is None else now
        for directory in list(self._entry_dirs()):
            report.parts_removed += self._prune_parts(directory, dry_run)
        entries = sorted(self.list(), key=lambda e: e.last_used)
        kept: builtins.list[CacheEntry] = []
        for entry in entries:
            expired = max_age is not None and now - entry.last_used > max_age
            if not (expired and self._prune_one(entry, report, dry_run, keep)):
                kept.append(entry)
        if max_bytes is not None:
            total = sum(e.size for e in kept)
            for entry in kept:  # least recently used first
                if total <= max_bytes:
                    break
                if self._prune_one(entry, report, dry_run, keep):
                    total -= entry.size
        if not dry_run:
            prune_sets(self.layout)
            prune_snapshots(self.layout)
        return report

    def _prune_one(
        self,
        entry: CacheEntry,
        report: PruneReport,
        dry_run: bool,
        keep: Callable[[CacheEntry], bool] | None,
    ) -> bool:
        in_use = keep is not None and keep(entry)
        if not in_use and (dry_run or self._remove_dir(entry.directory)):
            report.removed.append(entry)
            report.freed_bytes += entry.size
            return True
        report.busy_skipped += 1
        return False

    def _prune_parts(self, directory: Path, dry_run: bool) -> int:
        try:
            names = [
                n for n in os.listdir(directory) if n.endswith((PART_SUFFIX, PART_STATE_SUFFIX))
            ]
        except OSError:
            return 0
        if not names:
            return 0
        try:
            with self.lock(directory).try_hold() as got:
                if not got:
                    return 0  # a live download owns them
                if not dry_run:
                    with self._writing(directory):
                        for name in names:
                            remove_any(directory / name)
                    try:
                        directory.rmdir()  # only succeeds if nothing else was there
                    except OSError:
                        pass
        except ReadOnlyCacheError:
            if not dry_run:
                raise  # a dry run on a read-only root cannot tell live parts from dead ones
        return sum(1 for n in names if n.endswith(PART_SUFFIX))

    def verify(self, ref: str | ModelSource | None = None) -> builtins.list[VerifyResult]:
        """Re-hash entries fully; delete any whose bytes disagree with their sidecar."""
        self.layout.writable()
        if ref is None:  # a directory holding only a partial download is not an entry
            targets = [d for d in self._entry_dirs() if self._has_content(d)]
        else:
            targets = [e.directory for e in self.find(ref)]
        results = [self._verify_dir(directory) for directory in targets]
        prune_snapshots(self.layout)  # a snapshot that lost a corrupt file is no snapshot
        return results

    def _verify_dir(self, directory: Path) -> VerifyResult:
        with self.lock(directory).try_hold() as got:
            if not got:
                return VerifyResult(directory, True, "busy: a download is writing it")
            try:
                meta = read_metadata(directory)
            except MetadataError as exc:
                return VerifyResult(
                    directory, False, f"sidecar {exc}; rebuilt from the file on next use"
                )
            file_path = directory / meta.file_path
            problem = self._verify_file(directory, file_path, meta)
            if problem is not None:
                self._discard(directory, file_path)
                return VerifyResult(directory, False, problem)
            meta = self._restamp(directory, file_path, meta)
            entry = CacheEntry.from_metadata(directory, meta, os.lstat(directory).st_mtime)
            return VerifyResult(directory, True, "ok", entry)

    def _verify_file(self, directory: Path, file_path: Path, meta: EntryMetadata) -> str | None:
        """What is wrong with an entry (its file and sidecar are then removed), or None."""
        if not self._fits(directory, meta):
            return "sidecar belongs to another entry: file and sidecar removed"
        st = lstat_regular(file_path)
        if st is None:
            return "model file missing or not a regular file"
        if st.st_size != meta.size:
            return "size mismatch: corrupt file removed"
        try:
            digest, size, git_sha1 = self._digests(file_path, meta)
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc}): removed"
        if size != meta.size or digest != meta.sha256:
            return "size or SHA-256 mismatch: corrupt file removed"
        if git_sha1 != meta.git_sha1:
            return "git blob id mismatch: file and sidecar removed"
        return None

    def _digests(self, file_path: Path, meta: EntryMetadata) -> tuple[str, int, str | None]:
        """SHA-256, size and, when the sidecar names one, the git blob id (same pass)."""
        if meta.git_sha1 is None:
            digest, size, _ = self.hash_file(file_path)
            return digest, size, None
        fd = os.open(file_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            digest, git_sha1, size = content_digests(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
        return digest, size, git_sha1
