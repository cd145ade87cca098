"""Progress events delivered to the caller's callback, and throttling of byte counts."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Protocol, TypeAlias

if TYPE_CHECKING:
    from .fetch.hub import HubFileInfo

EventKind = Literal[
    "cache_hit",  # served from the cache
    "waiting",  # another thread or process holds the entry lock
    "start",  # a transfer begins (bytes_done > 0 means it resumes)
    "progress",  # bytes arrived
    "retry",  # a transient failure; message says why, a retry follows after a back-off
    "restart",  # the partial file could not be trusted and is discarded
    "not_modified",  # refresh found the cached file still current
    "done",  # the verified entry is in the cache
    "tier_hit",  # found in the shared tier; downloading from there, not the origin
    "tier_upload",  # copied into the shared tier for other machines
    "tier_lead",  # this machine downloads from the origin for the fleet (it holds the lease)
    "tier_follow",  # another machine is downloading it; its bytes stream through the tier
    "tier_takeover",  # that machine stopped (no heartbeat): this one carries on from the origin
    "warning",  # something went wrong that did not stop the download (message says what)
    "adopted",  # found in the Hugging Face cache, verified by hash and linked: no download
]


@dataclass(frozen=True)
class ProgressEvent:
    kind: EventKind
    source: str  # redacted display form
    bytes_done: int = 0
    bytes_total: int | None = None
    message: str = ""
    # For a whole repository (snapshot): files finished so far and in all; None otherwise.
    files_done: int | None = None
    files_total: int | None = None


ProgressCallback = Callable[[ProgressEvent], None]
# Sees every byte of a download in file order, as it is hashed: (offset, bytes, total size
# if known). The shared tier uses it to publish verified chunks while the download runs.
TapData: TypeAlias = "memoryview | bytes"
HashTap: TypeAlias = Callable[[int, TapData, "int | None"], None]


class DownloadWatcher(Protocol):
    """Sees one file's download from the inside, so it can be served while it runs (the
    mirror). Called from the downloading threads; must be quick and must never raise."""

    def described(self, info: HubFileInfo) -> None:
        """The hub said what it will send (size, SHA-256 or git blob id, commit)."""

    def hashed(self, offset: int, data: TapData, total: int | None) -> None:
        """Bytes hashed in file order; they are in the part file. A pass over the file
        starts at offset 0 (a retry hashes again what it kept)."""

    def restarted(self) -> None:
        """The part file was discarded: what it held is no longer part of the download."""


class ProgressEmitter:
    """Calls the callback for lifecycle events, and for bytes at most every ``interval`` s."""

    def __init__(
        self,
        callback: ProgressCallback | None,
        source: str,
        interval: float = 0.1,
        watcher: DownloadWatcher | None = None,
    ):
        self._callback = callback
        self._source = source
        self._interval = interval
        self._last = 0.0
        self.tap: HashTap | None = None
        self.listener: Callable[[EventKind], None] | None = None  # sees every event kind
        self.watcher = watcher

    def emit(
        self, kind: EventKind, done: int = 0, total: int | None = None, message: str = ""
    ) -> None:
        listener = self.listener
        if listener is not None:
            listener(kind)
        if kind == "restart" and self.watcher is not None:
            self.watcher.restarted()
        if self._callback is not None:
            self._callback(ProgressEvent(kind, self._source, done, total, message))

    def bytes(self, done: int, total: int | None, *, force: bool = False) -> None:
        if self._callback is None:
            return
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            self._callback(ProgressEvent("progress", self._source, done, total))

    def hashed(self, offset: int, data: TapData, total: int | None) -> None:
        tap = self.tap
        if tap is not None:
            tap(offset, data, total)
        if self.watcher is not None:
            self.watcher.hashed(offset, data, total)

    def described(self, info: HubFileInfo) -> None:
        if self.watcher is not None:
            self.watcher.described(info)
