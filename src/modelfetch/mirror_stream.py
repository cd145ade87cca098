"""Serving a file while the mirror pulls it (``modelfetch serve``).

The download engine hashes a file in order, and every byte it hashes is already in the part
file (the engine writes before it hashes). A ``Fill`` watches one pull as its
``DownloadWatcher``: what the hub said about the file (so a ``HEAD`` is answered at once),
and how far the current pass over the part has been hashed. A ``FillReader`` sends one
response body from it: the bytes below that frontier at once, the rest as it grows.

Why no client ever gets a complete body of wrong bytes:

* The last byte is held back until the pull has verified the whole file and promoted it.
  If verification (or anything else) fails, every reader is cut: the client sees a body
  shorter than its ``Content-Length``.
* A new pass over the part (a retry hashes again from offset 0; a restart discards the
  part) may rewrite bytes already sent, so a reader that has sent bytes of an older pass is
  cut. Readers that have sent nothing yet go on with the new pass.
* Each pass is read through the descriptor opened when that pass began, so a part that was
  replaced meanwhile is never mixed in; and a pass's bytes are served as the finished file
  only if it hashed the whole file and is the very inode that was promoted.

Threads: the watcher methods run in the download's threads and only take a short lock;
they wake the event loop (at most one wake-up queued at a time). Readers run on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from .progress import TapData

if TYPE_CHECKING:
    from .cache import CacheEntry
    from .fetch.hub import HubFileInfo

log = logging.getLogger("modelfetch.mirror")
# A reader waits for the next bytes in steps of at most this long (a wake-up may be missed
# only if the loop is gone; the step makes the stall bound hold regardless).
WAIT_STEP = 1.0
MAX_WAITS = 10_000_000  # a last-resort bound on a reader's wait loop; the stall bound ends it


class StreamCut(Exception):
    """This response cannot be completed: the pull failed, stalled, or started over after
    some of its bytes were sent."""


@dataclass(frozen=True)
class FillState:
    generation: int  # changes when a new pass over the part begins (or one is abandoned)
    hashed: int  # bytes of the current pass hashed in order (so on disk)
    done: Path | None  # the promoted file, once the pull has verified it
    done_generation_ok: bool  # the current pass's bytes are exactly the promoted file's
    error: str | None


class Fill:
    """One pull, watched; created on the event loop, fed by the download's threads."""

    def __init__(self, loop: asyncio.AbstractEventLoop, part: Path) -> None:
        self._loop = loop
        self._part = part
        self._lock = threading.Lock()
        self._info: HubFileInfo | None = None
        self._generation = 0
        self._fd: int | None = None
        self._hashed = 0
        self._done: Path | None = None
        self._done_ok = False
        self._error: str | None = None
        self._wake_queued = False
        self._event = asyncio.Event()
        # Resolved (on the loop) with the hub's description of the file, once it is known.
        self.description: asyncio.Future[HubFileInfo] = loop.create_future()

    # -- what clients are told ---------------------------------------------------------------
    @property
    def info(self) -> HubFileInfo | None:
        with self._lock:
            return self._info

    def streamable(self) -> bool:
        """True when every header of the final answer is known before the file is: its size
        and its ETag (the SHA-256 of an LFS file, the git blob id of a git-stored one). An
        upstream that names neither is answered once the file is complete."""
        info = self.info
        if info is None or not info.size:
            return False
        return info.sha256 is not None or info.git_sha1 is not None

    # -- DownloadWatcher: called from the download's threads ----------------------------------
    def described(self, info: HubFileInfo) -> None:
        with self._lock:
            if self._info is not None:
                return  # the first description is what clients were told
            self._info = info
        self._call_soon(self._resolve_description)

    def hashed(self, offset: int, data: TapData, total: int | None) -> None:
        try:
            with self._lock:
                if self._done is not None or self._error is not None:
                    return
                if offset == 0 and (self._fd is None or self._hashed > 0):
                    self._new_pass()
                elif offset != self._hashed:
                    self._abandon_pass()  # not in order: nothing of it can be trusted
                if self._fd is None:
                    return
                self._hashed += len(data)
            self._wake()
        except Exception as exc:  # a watcher must never break the download
            log.debug("stream watcher: %r", exc)

    def restarted(self) -> None:
        with self._lock:
            self._abandon_pass()
        self._wake()

    # -- the end of the pull (the pull's thread) ---------------------------------------------
    def finish(self, entry: CacheEntry) -> None:
        with self._lock:
            ok = False
            if self._fd is not None and self._hashed == entry.size:
                try:
                    a, b = os.fstat(self._fd), os.stat(entry.path, follow_symlinks=False)
                    ok = (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
                except OSError:
                    ok = False
            if self._info is not None and self._info.size not in (None, entry.size):
                self._error = "the finished file's size is not the one announced"
            self._done, self._done_ok = entry.path, ok
            self._close_pass()
        self._wake()

    def fail(self, exc: BaseException) -> None:
        with self._lock:
            self._error = f"the pull from the upstream failed ({type(exc).__name__})"
            self._close_pass()
        self._call_soon(self._resolve_description)
        self._wake()

    # -- readers (the event loop) -----------------------------------------------------------
    def state(self) -> FillState:
        with self._lock:
            return FillState(self._generation, self._hashed, self._done, self._done_ok, self._error)

    def dup_pass(self, generation: int) -> int | None:
        """A descriptor of the current pass's part (the caller closes it), if ``generation``
        is still current; taken under the lock so the pass cannot be closed meanwhile."""
        with self._lock:
            if generation != self._generation or self._fd is None:
                return None
            return os.dup(self._fd)

    async def changed(self, timeout: float) -> None:
        """Return at the next change (or after ``timeout`` seconds)."""
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
        except asyncio.TimeoutError:
            pass

    # -- internals (lock held where noted) --------------------------------------------------
    def _new_pass(self) -> None:  # lock held
        self._close_pass()
        self._generation += 1
        self._hashed = 0
        try:
            self._fd = os.open(self._part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            self._fd = None  # served once finished, then

    def _abandon_pass(self) -> None:  # lock held
        if self._fd is not None or self._hashed:
            self._close_pass()
            self._generation += 1
            self._hashed = 0

    def _close_pass(self) -> None:  # lock held
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _wake(self) -> None:
        with self._lock:
            if self._wake_queued:
                return
            self._wake_queued = True
        self._call_soon(self._on_wake)

    def _call_soon(self, callback: Callable[[], None]) -> None:
        try:
            self._loop.call_soon_threadsafe(callback)
        except RuntimeError:
            pass  # the loop has ended: nobody is left to tell

    def _on_wake(self) -> None:  # on the loop
        with self._lock:
            self._wake_queued = False
        self._event.set()
        self._event = asyncio.Event()

    def _resolve_description(self) -> None:  # on the loop
        if self.description.done():
            return
        info = self.info
        if info is not None:
            self.description.set_result(info)
        else:  # failed before the hub said anything: waiters look at the pull instead
            self.description.cancel()


class FillReader:
    """Where the next bytes of one response body come from, while (and after) a pull runs."""

    def __init__(self, fill: Fill, size: int) -> None:
        self.fill = fill
        self.size = size
        self.started = False  # some body bytes may have gone out
        self._generation: int | None = None
        self._file: BinaryIO | None = None
        self._final = False  # _file is the promoted file

    async def span(self, pos: int, stall: float) -> tuple[BinaryIO, int]:
        """A file holding byte ``pos`` and the end of the bytes that may be sent from it now.

        Waits while the pull makes progress; raises StreamCut when it failed, when it made
        no progress for ``stall`` seconds, or when bytes already sent may not be the file's.
        """
        loop = asyncio.get_running_loop()
        seen: tuple[int, int, bool] | None = None
        since = loop.time()
        for _ in range(MAX_WAITS):
            state = self.fill.state()
            if state.error is not None:
                raise StreamCut(state.error)
            found = self._finished(state) if state.done is not None else self._running(state)
            if found is not None and found[1] > pos:
                return found
            marker = (state.generation, state.hashed, state.done is not None)
            if marker != seen:
                seen, since = marker, loop.time()
            left = stall - (loop.time() - since)
            if left <= 0:
                raise StreamCut(f"the pull made no progress for {stall:.0f} s")
            await self.fill.changed(min(left, WAIT_STEP))
        raise StreamCut("gave up waiting for the pull")

    def _running(self, state: FillState) -> tuple[BinaryIO, int] | None:
        if state.generation != self._generation:
            if self.started:
                raise StreamCut("the download started over after bytes were sent")
            self._switch(state.generation)
        if self._file is None:
            return None
        # The last byte waits for the verification of the whole file.
        return self._file, min(state.hashed, self.size - 1)

    def _finished(self, state: FillState) -> tuple[BinaryIO, int]:
        assert state.done is not None
        if self._final:
            assert self._file is not None
            return self._file, self.size
        same_pass = state.done_generation_ok and state.generation == self._generation
        if same_pass and self._file is not None:
            self._final = True
            return self._file, self.size
        if self.started:
            raise StreamCut("the finished file is not the one that was being sent")
        self.close()
        try:
            fd = os.open(state.done, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise StreamCut(f"the finished file vanished ({exc.strerror})") from None
        self._file = os.fdopen(fd, "rb")
        if os.fstat(fd).st_size != self.size:
            raise StreamCut("the finished file's size is not the one announced")
        self._final = True
        return self._file, self.size

    def _switch(self, generation: int) -> None:
        self.close()
        self._generation = generation
        fd = self.fill.dup_pass(generation)
        self._file = os.fdopen(fd, "rb") if fd is not None else None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
