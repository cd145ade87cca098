"""One cache entry: lookups that verify and repair, promotion (manage.py: all entries).

Layout under the root (``MODELFETCH_CACHE_DIR`` or the platform cache dir)::

    CACHEDIR.TAG                      marks the tree for backup tools
    entries/<stem>-<key12>/           one entry per source
        <file name>                   the model file, only ever placed by rename
        metadata.json                 sidecar (core/sidecar.py)
        <file name>.part(.json)       an unfinished download and its validator
    transient/<stem>-<key12>-<rand>/  entries made by the no-cache policy
    sets/<name>-<key12>/              split GGUF shards side by side, as relative symlinks
    refs/<key>.json                   what an hf://owner/repo:TAG resolved to
    locks/<dir name>.lock             flock files, one per entry

Invariants: a model file is in an entry only after it was verified and fsynced; on every
hit the sidecar's ``bytes``, its stat stamp's size and the file's size agree, and its
SHA-256 is the caller's pin when there is one; anything else is deleted and treated as a
miss, never served. Every path is reached through layout.py, which refuses a root whose
layout directories are links (or not directories); everything this module deletes lies in
a directory whose name matches our pattern. Anything else in the root is left alone.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

from ..core.sidecar import METADATA_NAME, EntryMetadata, EntryRecord, FileStamp, MetadataError
from ..errors import (
    CacheStorageError,
    CorruptCacheError,
    IntegrityError,
    ReadOnlyCacheError,
    storage_error,
)
from ..fsutil import (
    clear_squatter,
    fsync_dir,
    is_directory,
    lstat_regular,
    remove_any,
    sha256_file,
)
from ..lock import EntryLock
from ..options import env_cache_dir
from ..source import ModelSource
from .layout import ENTRIES, LOCKS, TRANSIENT, Layout
from .part import part_paths
from .sidecar import read_metadata, utc_now, write_metadata

ENTRY_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,64}-([0-9a-f]{12})$")
TRANSIENT_NAME = re.compile(r"^[A-Za-z0-9._+-]{1,64}-([0-9a-f]{12})-[0-9a-f]{8}$")


def default_cache_dir() -> Path:
    env = env_cache_dir()
    if env:
        return Path(env).expanduser()
    import platformdirs  # only when no cache dir is configured

    return Path(platformdirs.user_cache_dir("modelfetch", appauthor=False))


@dataclass(frozen=True, kw_only=True)
class CacheEntry(EntryRecord):
    """A verified file in the cache: its EntryRecord (sha256, size, validators, commit,
    git_sha1) and where it lies. ``path`` is what callers open."""

    path: Path
    directory: Path
    source: str
    source_kind: str
    cache_key: str
    created_at: str
    updated_at: str
    transient: bool
    last_used: float = field(compare=False)
    # For a split GGUF: its first shard inside a directory that holds every shard (as
    # links), which is the path llama.cpp and friends need. None for a single file.
    set_path: Path | None = field(default=None, compare=False)
    # How ensure() got it: "cache", "revalidated", "origin", "tier" (a finished copy in the
    # shared tier), "peer" (streamed from another machine's download), "takeover" (that
    # machine died; finished from the origin). None for entries read by Cache methods.
    via: str | None = field(default=None, compare=False)

    @property
    def bytes(self) -> int:
        """The file's size: ``size`` under its earlier name, kept for compatibility."""
        return self.size

    @classmethod
    def from_metadata(cls, directory: Path, meta: EntryMetadata, last_used: float) -> CacheEntry:
        record = {f.name: getattr(meta, f.name) for f in fields(EntryRecord)}
        return cls(
            **record,
            path=directory / meta.file_path,
            directory=directory,
            source=meta.source,
            source_kind=meta.source_kind,
            cache_key=meta.cache_key,
            created_at=meta.created_at,
            updated_at=meta.updated_at,
            transient=meta.transient,
            last_used=last_used,
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "path": str(self.path),
            "source": self.source,
            "source_kind": self.source_kind,
            "cache_key": self.cache_key,
            "bytes": self.size,  # the name `ls --json` has always used
            "size": self.size,
            "sha256": self.sha256,
            "etag": self.etag,
            "last_modified": self.last_modified,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
            "transient": self.transient,
            "last_used": self.last_used,
            "commit": self.commit,
            "git_sha1": self.git_sha1,
            "set_path": str(self.set_path) if self.set_path else None,
            "via": self.via,
        }


def _fresh_metadata(source: ModelSource, size: int, sha256: str) -> EntryMetadata:
    now = utc_now()
    return EntryMetadata(
        source=source.display,
        source_kind=source.kind,
        cache_key=source.cache_key,
        file_name=source.file_name,
        file_path=source.file_name,
        size=size,
        sha256=sha256,
        created_at=now,
        updated_at=now,
    )


def read_sidecar(directory: Path) -> EntryMetadata | None:
    try:
        return read_metadata(directory)
    except MetadataError:
        return None


class EntryStore:
    """A cache root. Cheap to construct; thread-safe (all state is on disk)."""

    def __init__(
        self,
        root: str | os.PathLike[str] | None = None,
        *,
        hash_file: Callable[[Path], tuple[str, int, object]] = sha256_file,
    ) -> None:
        """``hash_file`` hashes a cached file when its stamp does not prove it intact (a
        parameter so tests can count re-hashes)."""
        self.hash_file = hash_file
        base = Path(root).expanduser() if root is not None else default_cache_dir()
        # Resolve once: a root that is itself a symlink (cache on another disk) is fine;
        # symlinks *inside* the root are never followed (layout.py).
        try:
            self.root = base.resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop (< 3.13)
            raise CorruptCacheError(f"cache root {base} cannot be resolved: {exc}") from None
        self.layout = Layout(self.root)
        self.entries_dir = self.layout.path(ENTRIES)
        self.transient_dir = self.layout.path(TRANSIENT)
        self.locks_dir = self.layout.path(LOCKS)

    # -- layout -------------------------------------------------------------------------
    def prepare(self) -> None:
        """Create the layout; refuse a root whose layout directories are links or files."""
        self.layout.create(ENTRIES, TRANSIENT, LOCKS)
        self.layout.write_tag()

    def entry_dir(self, source: ModelSource) -> Path:
        return self.entries_dir / source.entry_dir_name

    def new_transient_dir(self, source: ModelSource) -> Path:
        return self.transient_dir / f"{source.entry_dir_name}-{os.urandom(4).hex()}"

    def has_entry_dir(self, source: ModelSource) -> bool:
        """Anything at ``source``'s entry name (checked by the lookups), in a safe root."""
        return self.layout.check() and os.path.lexists(self.entry_dir(source))

    def make_entry_dir(self, directory: Path, file_name: str) -> None:
        """Create ``directory`` for a download of ``file_name``, and clear every name the
        download will write of anything that is not a regular file (a directory, a FIFO, a
        link: removed, never followed). Call it under the entry's lock, after prepare()."""
        with self._writing(directory):
            if not is_directory(directory):
                remove_any(directory)  # a link or file squatting on the entry's name
                os.mkdir(directory)
            for name in (
                file_name,
                METADATA_NAME,
                *(p.name for p in part_paths(directory, file_name)),
            ):
                clear_squatter(directory / name)

    def lock(self, directory: Path) -> EntryLock:
        self.layout.create(LOCKS)
        return EntryLock(self.locks_dir / f"{directory.name}.lock", root=self.root)

    @contextmanager
    def _writing(self, path: Path) -> Iterator[None]:
        """Turn an OSError while changing the cache into the one clear storage error."""
        try:
            yield
        except OSError as exc:
            raise storage_error(exc, path, root=self.root) from None

    # -- lookups ------------------------------------------------------------------------
    def lookup_fast(self, source: ModelSource, expected_sha256: str | None) -> CacheEntry | None:
        """Serve a hit without locking or hashing: only when the stat stamp proves the file
        is byte-for-byte the one we verified. Read-only; anything doubtful returns None."""
        if not self.layout.check():
            return None
        directory = self.entry_dir(source)
        if not is_directory(directory):
            return None
        meta = read_sidecar(directory)
        if meta is None or meta.stamp is None or not self._meta_belongs(meta, source):
            return None
        if meta.size != meta.stamp.size:
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
        file whose stamp changed or whose stored SHA-256 is not the pin, and deletes file
        and sidecar when the sidecar belongs to another source or its size or hash
        disagrees with the file.
        """
        return self._inspect(source, expected_sha256, repair=True)

    def lookup_readonly(
        self, source: ModelSource, expected_sha256: str | None
    ) -> CacheEntry | None:
        """The checks of lookup_verified, changing nothing: for a root where no lock file
        can be created (read-only). A doubtful entry is a miss, but is not deleted."""
        return self._inspect(source, expected_sha256, repair=False)

    def _inspect(self, source: ModelSource, pin: str | None, *, repair: bool) -> CacheEntry | None:
        if not self.layout.check():
            return None
        directory = self.entry_dir(source)
        try:
            st_dir = os.lstat(directory)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(st_dir.st_mode):
            if repair:
                with self._writing(directory):
                    remove_any(directory)  # a link or file squatting on our entry's name
            return None
        file_path = directory / source.file_name
        meta = read_sidecar(directory)
        st = lstat_regular(file_path)
        if (
            st is None
            or (meta is not None and not self._meta_belongs(meta, source))
            or (meta is not None and meta.size != st.st_size)
        ):
            # No file, a sidecar of another source, or one whose size disagrees: a miss.
            if repair:
                self._discard(directory, file_path)
            return None
        if meta is not None and meta.stamp == FileStamp.of(st) and pin in (None, meta.sha256):
            used = self._touch(directory) if repair else st_dir.st_mtime
            return CacheEntry.from_metadata(directory, meta, used)
        try:
            digest, size, _ = self.hash_file(file_path)
        except OSError:
            size, digest = -1, ""
        known = pin or (meta.sha256 if meta is not None else None)
        if size != st.st_size or (known is not None and digest != known):
            if repair:
                self._discard(directory, file_path)
            return None
        # The sidecar records what the file hashed to: a stored SHA-256 that disagrees with
        # the pin is never returned, it is corrected (the file matched the pin). A git blob
        # id recorded for other content no longer describes the file.
        meta = meta or _fresh_metadata(source, size, digest)
        git_sha1 = meta.git_sha1 if meta.sha256 == digest else None
        meta = replace(meta, sha256=digest, size=size, git_sha1=git_sha1)
        if not repair:
            return CacheEntry.from_metadata(directory, meta, st_dir.st_mtime)
        meta = self._restamp(directory, file_path, meta)
        return CacheEntry.from_metadata(directory, meta, self._touch(directory))

    def get(self, source: ModelSource | str, sha256: str | None = None) -> CacheEntry | None:
        """The verified entry for ``source``, or None. Never touches the network; works on a
        read-only root (verifying without repairing)."""
        src = ModelSource.coerce(source)
        hit = self.lookup_fast(src, sha256)
        if hit is not None or not is_directory(self.entry_dir(src)):
            return hit
        try:
            with self.lock(self.entry_dir(src)).hold():
                return self.lookup_verified(src, sha256)
        except ReadOnlyCacheError:
            return self.lookup_readonly(src, sha256)

    @staticmethod
    def _meta_belongs(meta: EntryMetadata, source: ModelSource) -> bool:
        """The sidecar describes this source's entry; any other sidecar means a miss."""
        return (
            meta.cache_key == source.cache_key
            and meta.source_kind == source.kind
            and meta.file_name == source.file_name
            and meta.file_path == source.file_name
            and not meta.transient
        )

    def _fits(self, directory: Path, meta: EntryMetadata) -> bool:
        """The sidecar describes the entry directory it lies in (key, kind of entry, file),
        which is what can be checked without knowing the source."""
        transient = directory.parent == self.transient_dir
        match = (TRANSIENT_NAME if transient else ENTRY_NAME).match(directory.name)
        return (
            match is not None
            and match.group(1) == meta.cache_key[:12]
            and meta.transient == transient
            and meta.file_path == meta.file_name
        )

    @staticmethod
    def _touch(directory: Path) -> float:
        """Record a use (the directory's mtime is our LRU clock for prune)."""
        try:
            os.utime(directory)
        except OSError:
            pass  # a read-only root: the hit is still good
        return time.time()

    def _discard(self, directory: Path, file_path: Path) -> None:
        with self._writing(directory):
            remove_any(directory / METADATA_NAME)
            remove_any(file_path)  # for a symlink this removes the link, never its target
        try:
            directory.rmdir()  # only when nothing is left (a resumable part stays)
            fsync_dir(directory.parent)
        except OSError:
            fsync_dir(directory)

    @staticmethod
    def _restamp(directory: Path, file_path: Path, meta: EntryMetadata) -> EntryMetadata:
        """Record the file's stamp so the next hit needs no hashing. Best effort: a verified
        hit must not fail because a full or read-only disk refuses the sidecar; the next
        hit simply hashes again."""
        try:
            meta = meta.with_stamp(FileStamp.of(os.lstat(file_path)), utc_now())
            meta = write_metadata(directory, meta)
        except (OSError, CacheStorageError):
            pass
        return meta

    def restamp_linked(self, entry: CacheEntry) -> None:
        """A new hard link to the entry's file (the Hugging Face cache's blob, another
        commit's entry) changes its ctime, which is part of the stamp that lets a hit skip
        re-hashing: record the new stamp if nothing else about the file changed."""
        with self.lock(entry.directory).hold():
            try:
                meta = read_metadata(entry.directory)
                st = os.lstat(entry.path)
            except (MetadataError, OSError):
                return
            old = meta.stamp
            if old is None or (old.size, old.mtime_ns, old.ino) != (
                st.st_size,
                st.st_mtime_ns,
                st.st_ino,
            ):
                return
            if old != FileStamp.of(st):
                write_metadata(entry.directory, meta.with_stamp(FileStamp.of(st), utc_now()))

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
        git_sha1: str | None = None,
    ) -> CacheEntry:
        """Move a finished, verified part into place and write its sidecar (``git_sha1``
        only when the content was checked against it)."""
        part, part_state = part_paths(directory, source.file_name)
        final = directory / source.file_name
        st = lstat_regular(part)
        if st is None or st.st_size != size:
            raise IntegrityError(f"partial file for {source.display} vanished or changed size")
        with self._writing(final):
            clear_squatter(final)  # never rename over a directory; a link is replaced itself
            os.replace(part, final)
            fsync_dir(directory)
            stamp = FileStamp.of(os.lstat(final))
        meta = replace(
            _fresh_metadata(source, size, sha256),
            etag=etag,
            last_modified=last_modified,
            transient=transient,
            stamp=stamp,
            commit=commit,
            git_sha1=git_sha1,
        )
        try:
            meta = write_metadata(directory, meta)
        except CacheStorageError:
            # Without a sidecar the file would be re-hashed and lose its validators; put
            # back as a complete part (its .part.json is still there), the next run
            # resumes it through the ordinary verified path instead of downloading again.
            try:
                os.replace(final, part)
            except OSError:
                pass
            raise
        try:
            remove_any(part_state)
        except OSError:
            pass  # a stale part state is ignored once the file is promoted
        return CacheEntry.from_metadata(directory, meta, self._touch(directory))

    def mark_revalidated(self, entry: CacheEntry, commit: str | None = None) -> CacheEntry:
        """Refresh found the file unchanged at the origin: bump updated_at (and the commit)."""
        try:
            meta = read_metadata(entry.directory)
        except MetadataError:
            return entry  # the sidecar could not be rebuilt (full disk): nothing to bump
        meta = meta.with_stamp(meta.stamp, utc_now())
        if commit is not None:
            meta = replace(meta, commit=commit)
        try:
            meta = write_metadata(entry.directory, meta)
        except CacheStorageError:
            return entry  # the file is current either way; the next refresh asks again
        return CacheEntry.from_metadata(entry.directory, meta, self._touch(entry.directory))
