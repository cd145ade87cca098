"""The on-disk cache: layout, lookups that verify and repair, promotion, and management.

Layout under the root (``MODELFETCH_CACHE_DIR`` or the platform cache dir)::

    CACHEDIR.TAG                      marks the tree for backup tools
    entries/<stem>-<key12>/           one entry per source
        <file name>                   the model file, only ever placed by rename
        metadata.json                 sidecar (metadata.py)
        <file name>.part(.json)       an unfinished download and its validator
    transient/<stem>-<key12>-<rand>/  entries made by the no-cache policy
    sets/<name>-<key12>/              split GGUF shards side by side, as relative symlinks
    locks/<dir name>.lock             flock files, one per entry

Invariants: a model file is in an entry only after it was verified and fsynced; a file
whose size or SHA-256 disagrees with what we know is deleted, never served; everything this
module deletes lies in a directory whose name matches our pattern, and directories are never
followed through symlinks. Anything else in the root is left alone.
"""

from __future__ import annotations

import builtins
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import CorruptCacheError, IntegrityError
from .fsutil import fsync_dir, lstat_regular, sha256_file, unlink_quiet
from .lock import EntryLock
from .metadata import (
    METADATA_NAME,
    EntryMetadata,
    FileStamp,
    MetadataError,
    read_metadata,
    utc_now,
    write_metadata,
)
from .shards import prune_sets
from .source import ModelSource

ENTRIES, TRANSIENT, LOCKS = "entries", "transient", "locks"
_ENTRY_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,64}-[0-9a-f]{12}$")
_TRANSIENT_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,64}-[0-9a-f]{12}-[0-9a-f]{8}$")
_CACHEDIR_TAG = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This directory is a modelfetch cache; see https://bford.info/cachedir/\n"
)


def default_cache_dir() -> Path:
    env = os.environ.get("MODELFETCH_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    import platformdirs  # only when no cache dir is configured

    return Path(platformdirs.user_cache_dir("modelfetch", appauthor=False))


@dataclass(frozen=True)
class CacheEntry:
    """A verified file in the cache. ``path`` is what callers open."""

    path: Path
    directory: Path
    source: str
    source_kind: str
    cache_key: str
    bytes: int
    sha256: str
    etag: str | None
    last_modified: str | None
    created_at: str
    updated_at: str
    transient: bool
    last_used: float = field(compare=False)
    commit: str | None = None
    # For a split GGUF: its first shard inside a directory that holds every shard (as
    # links), which is the path llama.cpp and friends need. None for a single file.
    set_path: Path | None = field(default=None, compare=False)

    @classmethod
    def from_metadata(cls, directory: Path, meta: EntryMetadata, last_used: float) -> CacheEntry:
        return cls(
            path=directory / meta.file_path,
            directory=directory,
            source=meta.source,
            source_kind=meta.source_kind,
            cache_key=meta.cache_key,
            bytes=meta.bytes,
            sha256=meta.sha256,
            etag=meta.etag,
            last_modified=meta.last_modified,
            created_at=meta.created_at,
            updated_at=meta.updated_at,
            transient=meta.transient,
            last_used=last_used,
            commit=meta.commit,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "source": self.source,
            "source_kind": self.source_kind,
            "cache_key": self.cache_key,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "transient": self.transient,
            "last_used": self.last_used,
            "commit": self.commit,
            "set_path": str(self.set_path) if self.set_path else None,
        }


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


def _fresh_metadata(source: ModelSource, size: int, sha256: str) -> EntryMetadata:
    now = utc_now()
    return EntryMetadata(
        source=source.display,
        source_kind=source.kind,
        cache_key=source.cache_key,
        file_name=source.file_name,
        file_path=source.file_name,
        bytes=size,
        sha256=sha256,
        created_at=now,
        updated_at=now,
    )


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class Cache:
    """A cache root. Cheap to construct; thread-safe (all state is on disk)."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        base = Path(root).expanduser() if root is not None else default_cache_dir()
        # Resolve once: a root that is itself a symlink (cache on another disk) is fine;
        # symlinks *inside* the root are not followed.
        self.root = base.resolve()
        self.entries_dir = self.root / ENTRIES
        self.transient_dir = self.root / TRANSIENT
        self.locks_dir = self.root / LOCKS

    # -- layout -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout; refuse to work through a symlinked subdirectory."""
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.entries_dir, self.transient_dir, self.locks_dir):
            try:
                sub.mkdir(exist_ok=True)
            except FileExistsError:
                pass
            if not _is_real_dir(sub):
                raise CorruptCacheError(
                    f"{sub} is not a plain directory (a symlink or file?); move it away and "
                    "retry, modelfetch will not write through it"
                )
        tag = self.root / "CACHEDIR.TAG"
        if not tag.exists():
            try:
                tag.write_bytes(_CACHEDIR_TAG)
            except OSError:
                pass  # the tag is a courtesy to backup tools, not an invariant

    def entry_dir(self, source: ModelSource) -> Path:
        return self.entries_dir / source.entry_dir_name

    def new_transient_dir(self, source: ModelSource) -> Path:
        return self.transient_dir / f"{source.entry_dir_name}-{os.urandom(4).hex()}"

    def lock(self, directory: Path) -> EntryLock:
        return EntryLock(self.locks_dir / f"{directory.name}.lock")

    # -- lookups ------------------------------------------------------------------------
    def lookup_fast(self, source: ModelSource, expected_sha256: str | None) -> CacheEntry | None:
        """Serve a hit without locking or hashing: only when the stat stamp proves the file
        is byte-for-byte the one we verified. Read-only; anything doubtful returns None."""
        directory = self.entry_dir(source)
        if not _is_real_dir(directory):
            return None
        try:
            meta = read_metadata(directory)
        except MetadataError:
            return None
        if not self._meta_belongs(meta, source) or meta.stamp is None:
            return None
        if expected_sha256 is not None and meta.sha256 != expected_sha256:
            return None
        st = lstat_regular(directory / meta.file_path)
        if st is None or FileStamp.of(st) != meta.stamp:
            return None
        return CacheEntry.from_metadata(directory, meta, self._touch(directory))

    def lookup_verified(
        self, source: ModelSource, expected_sha256: str | None
    ) -> CacheEntry | None:
        """Full check with repair. The caller must hold the entry lock.

        Rebuilds a missing/corrupt sidecar from an intact file (no network), re-hashes a
        file whose stamp changed, and deletes a file whose size or hash disagrees.
        """
        directory = self.entry_dir(source)
        try:
            st_dir = os.lstat(directory)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st_dir.st_mode):
            unlink_quiet(directory)  # a symlink or file squatting on our entry name
            return None
        try:
            meta: EntryMetadata | None = read_metadata(directory)
        except MetadataError:
            meta = None
        if meta is not None and not self._meta_belongs(meta, source):
            meta = None
        file_path = directory / source.file_name
        st = lstat_regular(file_path)
        if st is None:
            self._drop_file(file_path)
            unlink_quiet(directory / METADATA_NAME)
            return None
        if meta is not None and meta.bytes != st.st_size:
            self._discard(directory, file_path)
            return None
        stamp = FileStamp.of(st)
        if (
            meta is not None
            and meta.stamp == stamp
            and (expected_sha256 is None or expected_sha256 == meta.sha256)
        ):
            return CacheEntry.from_metadata(directory, meta, self._touch(directory))
        digest, size, _ = sha256_file(file_path)
        known = expected_sha256 or (meta.sha256 if meta is not None else None)
        if (known is not None and digest != known) or size != st.st_size:
            self._discard(directory, file_path)
            return None
        if meta is None:
            meta = _fresh_metadata(source, size, digest)
        meta = meta.with_stamp(FileStamp.of(os.lstat(file_path)))
        write_metadata(directory, meta)
        return CacheEntry.from_metadata(directory, meta, self._touch(directory))

    def get(self, source: ModelSource | str, sha256: str | None = None) -> CacheEntry | None:
        """The verified entry for ``source``, or None. Never touches the network."""
        src = ModelSource.coerce(source)
        hit = self.lookup_fast(src, sha256)
        if hit is not None or not _is_real_dir(self.entry_dir(src)):
            return hit
        with self.lock(self.entry_dir(src)).hold():
            return self.lookup_verified(src, sha256)

    @staticmethod
    def _meta_belongs(meta: EntryMetadata, source: ModelSource) -> bool:
        return (
            meta.cache_key == source.cache_key
            and meta.file_path == source.file_name
            and not meta.transient
        )

    @staticmethod
    def _touch(directory: Path) -> float:
        """Record a use (the directory's mtime is our LRU clock for prune)."""
        try:
            os.utime(directory)
        except OSError:
            pass
        return time.time()

    @staticmethod
    def _drop_file(path: Path) -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            import shutil  # shutil and tempfile are imported on write paths only

            shutil.rmtree(path, ignore_errors=True)
        else:
            unlink_quiet(path)  # for a symlink this removes the link, never its target

    def _discard(self, directory: Path, file_path: Path) -> None:
        unlink_quiet(directory / METADATA_NAME)
        self._drop_file(file_path)
        fsync_dir(directory)

    # -- writing ------------------------------------------------------------------------
    def promote(
        self,
        source: ModelSource,
        directory: Path,
        *,
        sha256: str,
        size: int,
        etag: str | None,
        last_modified: str | None,
        transient: bool = False,
        commit: str | None = None,
    ) -> CacheEntry:
        """Move a finished, verified part into place and write its sidecar."""
        # resume pulls in the transfer engine (and urllib3): import it on the write path only
        from .resume import part_paths

        part, part_state = part_paths(directory, source.file_name)
        final = directory / source.file_name
        st = lstat_regular(part)
        if st is None or st.st_size != size:
            raise IntegrityError(f"partial file for {source.display} vanished or changed size")
        if os.path.lexists(final) and lstat_regular(final) is None:
            self._drop_file(final)  # never rename over a directory or through a symlink
        os.replace(part, final)
        fsync_dir(directory)
        meta = replace(
            _fresh_metadata(source, size, sha256),
            etag=etag,
            last_modified=last_modified,
            transient=transient,
            stamp=FileStamp.of(os.lstat(final)),
            commit=commit,
        )
        write_metadata(directory, meta)
        unlink_quiet(part_state)
        return CacheEntry.from_metadata(directory, meta, self._touch(directory))

    def mark_revalidated(self, entry: CacheEntry, commit: str | None = None) -> CacheEntry:
        """Refresh found the file unchanged at the origin: bump updated_at (and the commit)."""
        meta = read_metadata(entry.directory)
        meta = meta.with_stamp(meta.stamp)
        if commit is not None:
            meta = replace(meta, commit=commit)
        write_metadata(entry.directory, meta)
        return CacheEntry.from_metadata(entry.directory, meta, self._touch(entry.directory))

    # -- management ---------------------------------------------------------------------
    def _entry_dirs(self) -> Iterator[Path]:
        for parent, pattern in (
            (self.entries_dir, _ENTRY_NAME),
            (self.transient_dir, _TRANSIENT_NAME),
        ):
            if not _is_real_dir(parent):
                continue
            try:
                names = sorted(os.listdir(parent))
            except OSError:
                continue
            for name in names:
                path = parent / name
                if pattern.match(name) and _is_real_dir(path):
                    yield path

    def _load(self, directory: Path) -> CacheEntry | None:
        """An entry as listed: sidecar valid and file present with the recorded size."""
        try:
            meta = read_metadata(directory)
        except MetadataError:
            return None
        if (directory.parent == self.transient_dir) != meta.transient:
            return None
        st = lstat_regular(directory / meta.file_path)
        if st is None or st.st_size != meta.bytes:
            return None
        try:
            last_used = os.lstat(directory).st_mtime
        except OSError:
            return None
        return CacheEntry.from_metadata(directory, meta, last_used)

    def list(self) -> builtins.list[CacheEntry]:
        """Every readable entry; corrupt ones are skipped, not fatal."""
        return [e for d in self._entry_dirs() if (e := self._load(d)) is not None]

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
        if not _is_real_dir(directory):
            return False
        with self.lock(directory).try_hold() as got:
            if not got:
                return False
            import shutil

            shutil.rmtree(directory, ignore_errors=True)
            fsync_dir(directory.parent)
            return not directory.exists()

    def remove(self, ref: str | ModelSource) -> builtins.list[CacheEntry]:
        """Remove the matching entries (and, for a source, its corrupt or partial leftovers)."""
        removed = [e for e in self.find(ref) if self._remove_dir(e.directory)]
        if isinstance(ref, ModelSource):
            self._remove_dir(self.entry_dir(ref))
        prune_sets(self.root)
        return removed

    def clear(self) -> tuple[int, int]:
        """Remove every entry of ours, corrupt ones included. Returns (removed, busy)."""
        removed = busy = 0
        for directory in list(self._entry_dirs()):
            if self._remove_dir(directory):
                removed += 1
            else:
                busy += 1
        prune_sets(self.root, remove_all=busy == 0)
        return removed, busy

    def prune(
        self,
        max_age: float | None = None,
        max_bytes: int | None = None,
        *,
        dry_run: bool = False,
        now: float | None = None,
    ) -> PruneReport:
        """Remove parts of dead downloads, entries unused for ``max_age`` seconds, then the
        least recently used entries until the total is at most ``max_bytes``."""
        report = PruneReport()
        now = time.time() if now is None else now
        for directory in list(self._entry_dirs()):
            report.parts_removed += self._prune_parts(directory, dry_run)
        entries = sorted(self.list(), key=lambda e: e.last_used)
        keep: builtins.list[CacheEntry] = []
        for entry in entries:
            expired = max_age is not None and now - entry.last_used > max_age
            if not (expired and self._prune_one(entry, report, dry_run)):
                keep.append(entry)
        if max_bytes is not None:
            total = sum(e.bytes for e in keep)
            for entry in keep:  # least recently used first
                if total <= max_bytes:
                    break
                if self._prune_one(entry, report, dry_run):
                    total -= entry.bytes
        if not dry_run:
            prune_sets(self.root)
        return report

    def _prune_one(self, entry: CacheEntry, report: PruneReport, dry_run: bool) -> bool:
        if dry_run or self._remove_dir(entry.directory):
            report.removed.append(entry)
            report.freed_bytes += entry.bytes
            return True
        report.busy_skipped += 1
        return False

    def _prune_parts(self, directory: Path, dry_run: bool) -> int:
        from .resume import PART_STATE_SUFFIX, PART_SUFFIX

        try:
            names = [
                n for n in os.listdir(directory) if n.endswith((PART_SUFFIX, PART_STATE_SUFFIX))
            ]
        except OSError:
            return 0
        if not names:
            return 0
        with self.lock(directory).try_hold() as got:
            if not got:
                return 0  # a live download owns them
            if not dry_run:
                for name in names:
                    unlink_quiet(directory / name)
                try:
                    directory.rmdir()  # only succeeds if nothing else was there
                except OSError:
                    pass
        return sum(1 for n in names if n.endswith(PART_SUFFIX))

    def verify(self, ref: str | ModelSource | None = None) -> builtins.list[VerifyResult]:
        """Re-hash entries fully; delete any whose bytes disagree with their sidecar."""
        if ref is None:
            targets = list(self._entry_dirs())
        else:
            targets = [e.directory for e in self.find(ref)]
        results = []
        for directory in targets:
            results.append(self._verify_dir(directory))
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
            st = lstat_regular(file_path)
            if st is None:
                self._discard(directory, file_path)
                return VerifyResult(directory, False, "model file missing or not a regular file")
            digest, size, _ = sha256_file(file_path)
            if size != meta.bytes or digest != meta.sha256:
                self._discard(directory, file_path)
                return VerifyResult(
                    directory, False, "size or SHA-256 mismatch: corrupt file removed"
                )
            meta = meta.with_stamp(FileStamp.of(os.lstat(file_path)))
            write_metadata(directory, meta)
            entry = CacheEntry.from_metadata(directory, meta, os.lstat(directory).st_mtime)
            return VerifyResult(directory, True, "ok", entry)
