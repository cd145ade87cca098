"""One budget of extra connections shared by every download of a batch (a whole repository).

Each file being downloaded always has its first connection (the pool of file workers bounds
those). Anything beyond it, a segmented download's additional ranged connections, must be
granted here first, and is handed back as soon as that connection's worker ends. So a
batch never opens more than ``workers + extra`` connections in total, a large file cannot
take the connections a later file needs for its first stream, and connections freed by a
finished file go to whichever download asks next.
"""

from __future__ import annotations

import threading


class ConnectionBudget:
    """A counter of extra connections; thread-safe; never blocks."""

    def __init__(self, extra: int) -> None:
        if extra < 0:
            raise ValueError("a connection budget cannot be negative")
        self.extra = extra
        self._in_use = 0
        self._peak = 0
        self._lock = threading.Lock()

    def try_acquire(self, wanted: int) -> int:
        """Grant up to ``wanted`` extra connections now; returns how many were granted."""
        with self._lock:
            granted = max(0, min(wanted, self.extra - self._in_use))
            self._in_use += granted
            self._peak = max(self._peak, self._in_use)
            return granted

    def release(self, count: int = 1) -> None:
        with self._lock:
            self._in_use = max(0, self._in_use - count)

    @property
    def in_use(self) -> int:
        with self._lock:
            return self._in_use

    @property
    def peak(self) -> int:
        """The most extra connections held at once (for tests and reports)."""
        with self._lock:
            return self._peak
