"""Cooperative cancellation: a token the caller fires, checked between chunks and waits."""

from __future__ import annotations

import threading

from .errors import CancelledError


class CancelToken:
    """Thread-safe; one token may be shared by several ensure() calls."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

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
