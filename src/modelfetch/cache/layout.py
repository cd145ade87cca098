"""The directories of a cache root, reached without ever following a link inside the root.

Everything the cache reads or writes lies in one of seven directories directly below the
root, and every module gets them from here:

    entries/  transient/  locks/  sets/  refs/  snapshots/  trees/

Rules (README, "Cache layout and invariants"):

* The root itself may be a symlink (a cache on another disk); it is resolved once.
* A layout directory that exists but is not a real directory (a symlink, a file, a FIFO, a
  device) makes the whole root refused with :class:`CorruptCacheError`, for every command:
  a deliberate link cannot be told from a hostile one, and following it would read, serve
  or create files outside the root. Nothing is changed; the message says what to move.
* Below a layout directory every name is ours, so whatever has the wrong type where the
  cache expects its own file or directory is repaired: removed (a link itself, never its
  target) and then treated as missing.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import CacheStorageError, CorruptCacheError, storage_error

ENTRIES, TRANSIENT, LOCKS, SETS, REFS = "entries", "transient", "locks", "sets", "refs"
SNAPSHOTS, TREES = "snapshots", "trees"  # whole repositories (snapdir.py, hubtree.py)
LAYOUT_DIRS = (ENTRIES, TRANSIENT, LOCKS, SETS, REFS, SNAPSHOTS, TREES)
CACHEDIR_TAG = "CACHEDIR.TAG"
_TAG_BODY = (
    b"Signature: 8a477f597d28d172789f06886806bc55\n"
    b"# This directory is a modelfetch cache; see https://bford.info/cachedir/\n"
)


def describe_type(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISREG(mode):
        return "a regular file"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device node"
    return "not a directory"


class Layout:
    """The checked paths of one cache root. Cheap; holds no open files."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Plain strings: check() runs on every cache hit, and Path joins cost microseconds.
        self._root_str = str(root)
        self._dir_strs = [(name, os.path.join(self._root_str, name)) for name in LAYOUT_DIRS]

    def path(self, name: str) -> Path:
        return self.root / name

    def check(self) -> bool:
        """Raise CorruptCacheError for an unsafe root; return whether the root exists.

        Costs one stat per layout directory, so it runs at the start of every operation,
        the lock-free cache hit included.
        """
        try:
            st = os.stat(self._root_str)
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CacheStorageError(
                f"cannot read cache root {self.root}: {exc.strerror or exc}"
            ) from None
        if not stat.S_ISDIR(st.st_mode):
            raise CorruptCacheError(
                f"cache root {self.root} is not a directory; choose another --cache-dir"
            )
        for name, path in self._dir_strs:
            self._check_dir(name, path)
        return True

    def _check_dir(self, name: str, path_str: str | None = None) -> bool:
        try:
            st = os.lstat(path_str or os.path.join(self._root_str, name))
        except FileNotFoundError:
            return False
        except OSError as exc:
            raise CacheStorageError(f"cannot read {self.root / name}: {exc.strerror}") from None
        if stat.S_ISDIR(st.st_mode):
            return True
        path = self.root / name
        raise CorruptCacheError(
            f"cache root {self.root} is unsafe: {path} is {describe_type(st.st_mode)}, not a "
            "directory, and modelfetch never works through it; move it away (to keep the "
            "cache on another disk, point the cache root itself there)"
        )

    def has(self, name: str) -> bool:
        """True if layout directory ``name`` exists (and the root is safe)."""
        return self.check() and self._check_dir(name)

    def create(self, *names: str) -> None:
        """Create the root and the named layout directories (refusing an unsafe root)."""
        try:
            os.makedirs(self.root, exist_ok=True)
        except FileExistsError:
            pass  # not a directory: check() says so below
        except OSError as exc:
            raise storage_error(exc, self.root, root=self.root) from None
        self.check()
        for name in names:
            if self._check_dir(name):
                continue
            try:
                os.mkdir(self.root / name)
            except FileExistsError:
                pass  # made meanwhile by another process; checked below
            except OSError as exc:
                raise storage_error(exc, self.root / name, root=self.root) from None
            self._check_dir(name)

    def write_tag(self) -> None:
        """Mark the root for backup tools. A link or special file squatting on the tag's name
        is replaced (the link, never its target); a directory there is left alone."""
        path = self.root / CACHEDIR_TAG
        try:
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
                return
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError:
            return  # the tag is a courtesy to backup tools, not an invariant
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            return
        try:
            os.write(fd, _TAG_BODY)
        except OSError:
            pass
        finally:
            os.close(fd)

    def writable(self) -> None:
        """Raise ReadOnlyCacheError if the root (or a layout directory) cannot be written."""
        if not self.check():
            return
        for path in (self.root, *(self.root / n for n in LAYOUT_DIRS)):
            if os.path.isdir(path) and not os.access(path, os.W_OK | os.X_OK):
                read_only = os.statvfs(path).f_flag & getattr(os, "ST_RDONLY", 1)
                why = (
                    OSError(errno.EROFS, "Read-only file system")
                    if read_only
                    else OSError(errno.EACCES, "Permission denied")
                )
                raise storage_error(why, path, root=self.root)
