"""Small filesystem primitives that the cache's crash-safety rests on."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from collections.abc import Callable
from pathlib import Path

from .errors import storage_error

HASH_CHUNK = 4 * 1024 * 1024


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on directories; the rename itself still happened
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so readers see the old or the new content, never a mix.

    Callers write only inside cache directories they have checked, so whatever squats on
    ``path`` (a directory, a FIFO, a symlink) is ours to replace: the rename replaces a link
    itself, never its target. A failed write raises the one clear storage error (full disk,
    read-only root) and leaves the old content in place.
    """
    import tempfile  # (and shutil, random): write paths only, not a cache hit

    try:
        if is_directory(path):
            remove_any(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise storage_error(exc, path) from None
        raise
    fsync_dir(path.parent)


def read_regular_file(path: Path, max_bytes: int) -> bytes:
    """Read a small regular file without following a symlink at its last component.

    Raises OSError for a missing file, a symlink (ELOOP), a non-regular file, or a file over
    ``max_bytes`` (EFBIG), so a hostile cache directory cannot make us read /dev/zero or a
    multi-gigabyte "metadata" file.
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if st.st_size > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        chunks = []
        remaining = max_bytes + 1
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise OSError(errno.EFBIG, f"larger than {max_bytes} bytes", str(path))
        return data
    finally:
        os.close(fd)


def lstat_regular(path: Path) -> os.stat_result | None:
    """``lstat`` that answers None unless ``path`` is a regular file (not a symlink)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def sha256_file(
    path: Path,
    limit: int | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> tuple[str, int, hashlib._Hash]:
    """Hash a file (or its first ``limit`` bytes) without following symlinks.

    Returns (hexdigest, bytes_read, hasher) so a caller can keep feeding the hasher, which
    is how a resumed download continues the hash of its partial file.
    """
    hasher = hashlib.sha256()
    total = 0
    # O_NONBLOCK: a FIFO swapped in for the file must not hang us; it is refused below.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as fh:
            buf = bytearray(HASH_CHUNK)
            view = memoryview(buf)
            while limit is None or total < limit:
                want = HASH_CHUNK if limit is None else min(HASH_CHUNK, limit - total)
                n = fh.readinto(view[:want])
                if not n:
                    break
                hasher.update(view[:n])
                total += n
                if on_chunk is not None:
                    on_chunk(n)
    finally:
        os.close(fd)
    return hasher.hexdigest(), total, hasher


def unlink_quiet(path: Path) -> bool:
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def is_directory(path: Path) -> bool:
    """True for a real directory; a symlink to one is not."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_any(path: Path) -> None:
    """Remove whatever is at ``path`` without following it: a link goes, never its target; a
    directory goes with its contents (``rmtree`` does not follow links inside it either)."""
    if is_directory(path):
        import shutil  # write paths only, not a cache hit

        shutil.rmtree(path, ignore_errors=True)
        if os.path.lexists(path):
            shutil.rmtree(path)  # again, to raise what stopped it (a read-only root...)
        return
    unlink_quiet(path)


def clear_squatter(path: Path) -> None:
    """Make room for a regular file at ``path``: remove anything else found there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode):
        remove_any(path)


def is_inside(child: Path, parent: Path) -> bool:
    """True if ``child`` (not resolved) is ``parent`` itself or lies below it, lexically."""
    try:
        Path(os.path.normpath(child)).relative_to(os.path.normpath(parent))
    except ValueError:
        return False
    return True


_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Callable[[int, int, int, int], int] | None = None
_sync_file_range_loaded = False


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask the kernel to start writing a range of dirty pages to disk, without waiting.

    Linux's sync_file_range(SYNC_FILE_RANGE_WRITE) is not in Python's os module, so it is
    called through ctypes. Starting writeback while the download is still arriving means the
    fsync that makes the finished file durable has almost nothing left to do. Elsewhere this
    is a no-op and the final fsync simply does all the work.
    """
    global _sync_file_range, _sync_file_range_loaded
    if not _sync_file_range_loaded:
        _sync_file_range_loaded = True
        try:
            import ctypes
            import ctypes.util

            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            func = libc.sync_file_range
            func.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            func.restype = ctypes.c_int
            _sync_file_range = func
        except (OSError, AttributeError):
            _sync_file_range = None
    if _sync_file_range is not None and length > 0:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def git_blob_sha1_of(size: int) -> hashlib._Hash:
    """A SHA-1 primed with git's blob header; feed it the content to get the blob id."""
    hasher = hashlib.sha1(usedforsecurity=False)
    hasher.update(b"blob %d\x00" % size)
    return hasher


def content_digests(fd: int, size: int) -> tuple[str, str, int]:
    """(sha256, git blob sha1, bytes read) of an open file, in one pass from offset 0."""
    sha256 = hashlib.sha256()
    sha1 = git_blob_sha1_of(size)
    total = 0
    while total < size:
        data = os.pread(fd, min(HASH_CHUNK, size - total), total)
        if not data:
            break
        sha256.update(data)
        sha1.update(data)
        total += len(data)
    return sha256.hexdigest(), sha1.hexdigest(), total


def temp_sibling(path: Path) -> Path:
    """A unique name beside ``path`` for building it before the rename that publishes it."""
    return path.with_name(f".{path.name[:100]}.{os.getpid()}.{os.urandom(4).hex()}.tmp")


def hardlink_or_copy(src: Path, dst: Path) -> bool:
    """Make ``dst`` (which must not exist) hold ``src``'s bytes: a hard link where the
    filesystem allows it (no second copy on disk), else a copy, fsynced. True if linked."""
    try:
        os.link(src, dst, follow_symlinks=False)
        return True
    except OSError as exc:
        if exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
            raise
    fd_in = os.open(src, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        fd_out = os.open(dst, flags, 0o644)
        try:
            _copy_fd(fd_in, fd_out, os.fstat(fd_in).st_size)
            os.fsync(fd_out)
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
    return False


def _copy_fd(fd_in: int, fd_out: int, size: int) -> None:
    done = 0
    while done < size:
        try:
            n = os.sendfile(fd_out, fd_in, done, min(size - done, 1 << 30))
        except OSError as exc:
            if exc.errno not in (errno.EINVAL, errno.ENOSYS) or done:
                raise
            break  # no sendfile between these files: copy through a buffer
        if n == 0:
            return
        done += n
    while done < size:
        data = os.pread(fd_in, min(HASH_CHUNK, size - done), done)
        if not data:
            return
        view = memoryview(data)
        while view:
            view = view[os.write(fd_out, view) :]
        done += len(data)
