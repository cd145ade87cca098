"""One writer per cache entry, across threads and processes.

filelock's Unix lock is ``flock(2)`` on a file under ``<root>/locks``: the kernel drops it
when the holder's process dies (even by SIGKILL), so a crashed download never wedges the
entry. Each acquisition opens its own descriptor, so two threads of one process exclude each
other too. Waiting is a loop of short timed attempts, which is what lets a waiter honour its
cancel token and timeout without ever affecting the holder.

Before filelock opens it, the lock file is created here without following a link, and
anything else found at its name (a symlink, a directory, a FIFO, a device node) is removed:
a lock must never create, truncate or open a file outside the cache root. A lock file that
cannot be created (a read-only root) raises ReadOnlyCacheError, which lookups turn into a
read-only verification.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .cancel import CancelToken
from .errors import CorruptCacheError, LockTimeoutError, storage_error
from .fsutil import clear_squatter

_POLL = 0.05
_SLICE = 0.25


class EntryLock:
    def __init__(self, path: Path, root: Path | None = None) -> None:
        self.path = path
        self.root = root  # named in the read-only error

    def _ready(self) -> str:
        """Make sure a regular lock file is at our path; return the path for filelock."""
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            clear_squatter(self.path)
            fd = os.open(self.path, flags, 0o644)
        except OSError as exc:
            raise storage_error(exc, self.path, root=self.root) from None
        try:
            regular = stat.S_ISREG(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        if not regular:  # swapped under us between the check and the open
            raise CorruptCacheError(f"{self.path} is not a regular file; remove it and retry")
        return str(self.path)

    @contextmanager
    def hold(
        self,
        *,
        cancel: CancelToken | None = None,
        timeout: float | None = None,
        on_wait: Callable[[], None] | None = None,
    ) -> Iterator[None]:
        import filelock  # here, not at module level: a cache hit never takes a lock

        lock = filelock.FileLock(self._ready(), thread_local=False)
        deadline = None if timeout is None else time.monotonic() + timeout
        waited = False
        while True:
            if cancel is not None:
                cancel.check()
            slice_ = (
                _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
            )
            try:
                lock.acquire(timeout=slice_, poll_interval=_POLL)
                break
            except filelock.Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeoutError(
                        f"another download of this entry held its lock for over {timeout:.0f}s; "
                        "it is still running (a dead holder would have released it)"
                    ) from None
                if not waited and on_wait is not None:
                    on_wait()
                waited = True
        try:
            yield
        finally:
            lock.release()

    def is_held(self) -> bool:
        """True if some thread or process holds the lock right now."""
        import filelock

        lock = filelock.FileLock(self._ready(), thread_local=False)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            return True
        lock.release()
        return False

    @contextmanager
    def try_hold(self) -> Iterator[bool]:
        """Hold the lock if it is free right now; yield whether we got it."""
        import filelock

        lock = filelock.FileLock(self._ready(), thread_local=False)
        try:
            lock.acquire(blocking=False)
        except filelock.Timeout:
            yield False
            return
        try:
            yield True
        finally:
            lock.release()
