"""Cooperative cancellation: a token the caller fires, checked between chunks and waits.

Checking alone is not prompt: a thread blocked in ``recv()`` on a server that went silent
only notices at its read timeout. So code that blocks on the network registers a callback
that unblocks it (shuts its socket down), and ``cancel()`` runs those callbacks at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from .errors import CancelledError


class CancelToken:
    """Thread-safe; one token may be shared by several ensure() calls."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self._lock = threading.Lock()
        self._callbacks: dict[int, Callable[[], None]] = {}
        self._next_id = 0

    def cancel(self) -> None:
        with self._lock:
            self._event.set()
            callbacks = list(self._callbacks.values())
        for callback in callbacks:
            callback()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise CancelledError("cancelled by the caller; partial data is kept for resume")

    def sleep(self, seconds: float) -> None:
        """Sleep up to ``seconds``, raising CancelledError as soon as the token fires."""
        if self._event.wait(max(0.0, seconds)):
            self.check()

    def on_cancel(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Run ``callback`` (quick, non-blocking, from the cancelling thread) when the token
        fires, or right now if it already has. Returns a function that unregisters it."""
        with self._lock:
            fired = self._event.is_set()
            if not fired:
                key = self._next_id
                self._next_id += 1
                self._callbacks[key] = callback
        if fired:
            callback()
            return lambda: None

        def remove() -> None:
            with self._lock:
                self._callbacks.pop(key, None)

        return remove
