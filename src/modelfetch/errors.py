"""The one exception hierarchy of modelfetch.

Every message is meant to be shown to a person as-is: it says what went wrong and what to
do next, and it never contains a credential or a URL query string (callers build messages
from redacted values only).
"""

from __future__ import annotations

import errno


class ModelFetchError(Exception):
    """Base class of every error modelfetch raises on purpose."""


class InvalidSourceError(ModelFetchError, ValueError):
    """A source string or argument is malformed or unsafe."""


class CacheMissError(ModelFetchError):
    """The cache holds no valid entry and the policy forbids the network (cache-only)."""


class IntegrityError(ModelFetchError):
    """Downloaded or cached bytes do not match the expected size or SHA-256."""


class DownloadError(ModelFetchError):
    """The origin could not deliver the file (after retries, where retrying made sense)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InsecureRedirectError(DownloadError):
    """The origin redirected somewhere modelfetch refuses to follow (https->http, loops)."""


class CancelledError(ModelFetchError):
    """The caller's cancel token fired; partial data is kept for a later resume."""


class LockTimeoutError(ModelFetchError):
    """Another thread or process held the entry lock for longer than lock_timeout."""


class CorruptCacheError(ModelFetchError):
    """The cache root is unsafe to use (a layout directory that is a symlink or not a
    directory); corrupt entries inside it are repaired instead, never reported this way."""


class CacheStorageError(ModelFetchError):
    """The cache root could not be written (full disk, read-only root, failing device)."""


class DiskFullError(CacheStorageError):
    """Not enough disk space; what was safe to keep (a resumable part) is kept."""


class ReadOnlyCacheError(CacheStorageError):
    """The cache root is read-only (or not writable by this user): cached, verified files can
    still be read, nothing can be added, refreshed, verified or removed."""


_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def storage_error(
    exc: OSError, where: object, *, root: object = None, needed: int | None = None
) -> CacheStorageError:
    """The one clear error for a failed write at ``where`` (a path or a description).

    Every place that writes into the cache turns its OSError into this, so a full disk reads
    the same whether preallocation, the body, a checkpoint or a sidecar hit it first.
    """
    reason = exc.strerror or type(exc).__name__
    if exc.errno in _DISK_FULL:
        amount = f" ({needed} bytes needed)" if needed else ""
        return DiskFullError(
            f"not enough disk space for {where}{amount}: free some space and run the same "
            "command again (a partial download is kept and resumed where that is safe)"
        )
    if exc.errno in _READ_ONLY:
        state = "read-only" if exc.errno == errno.EROFS else "not writable"
        return ReadOnlyCacheError(
            f"cache root {root or where} is {state} ({reason}): cached files can be read, but "
            "nothing can be downloaded, refreshed, verified or removed there; use a writable "
            "--cache-dir (or MODELFETCH_CACHE_DIR)"
        )
    return CacheStorageError(f"cannot write {where}: {reason}")
