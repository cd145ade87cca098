"""Segments of a part file and the pure rules that split, steal and take them over.

The part file is covered by *segments* that tile ``[0, total)``; each has a position up to
which its bytes are on disk. A worker that finishes splits the largest remaining segment in
two, or takes over a segment whose connection stalled, so slow tails do not hold the
download back. The transfer engine (fetch/engine.py) owns the threads and the lock; this
module only decides, with the time passed in, so every rule is testable as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SPLIT = 8 * 1024 * 1024  # never leave a worker less than this to fetch after a split
SPLIT_ALIGN = 1024 * 1024
MAX_SEGMENTS = 4096  # a checkpoint with more is not ours


@dataclass
class Segment:
    start: int
    end: int | None  # exclusive; None only for a single stream of unknown length
    pos: int
    active: bool = False
    last_progress: float = 0.0
    pending: int = 0  # received into a buffer, not yet written (shown as progress only)
    written_back: int = -1  # up to here the kernel was asked to start writeback

    @property
    def remaining(self) -> int:
        return 0 if self.end is None else max(0, self.end - self.pos)

    @property
    def done(self) -> bool:
        return self.end is not None and self.pos >= self.end


def validate_segments(raw: object, total: int | None) -> list[Segment] | None:
    """Segments loaded from a part sidecar: they must tile [0, total) exactly."""
    if not isinstance(raw, list) or not raw or len(raw) > MAX_SEGMENTS:
        return None
    segs: list[Segment] = []
    expect = 0
    for item in raw:
        if not (isinstance(item, list) and len(item) == 3):
            return None
        start, end, pos = item
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (start, pos)):
            return None
        if end is not None and (not isinstance(end, int) or isinstance(end, bool)):
            return None
        if start != expect or pos < start or (end is not None and not start <= pos <= end):
            return None
        segs.append(Segment(start, end, pos))
        if end is None:
            expect = -1
            break
        expect = end
    if expect == -1:
        return segs if total is None and len(segs) == len(raw) else None
    return segs if total is not None and expect == total else None


def contiguous_frontier(segments: list[Segment]) -> int:
    """How far from byte 0 the part is on disk without a gap."""
    frontier = 0
    for seg in segments:
        if seg.start != frontier:
            break
        frontier = seg.pos
        if not seg.done:
            break
    return frontier


def split_segments(total: int, connections: int) -> list[Segment]:
    """The first split of a fresh download: equal, aligned pieces, none below MIN_SPLIT."""
    count = max(1, min(connections, total // MIN_SPLIT))
    size = -(-total // count)
    size += -size % SPLIT_ALIGN
    return [Segment(start, min(start + size, total), start) for start in range(0, total, size)]


class SegmentTable:
    """The segments of one transfer and the decisions about them (not thread-safe: the
    engine calls every method with its lock held)."""

    def __init__(self, segments: list[Segment]) -> None:
        self.segments = segments

    def snapshot(self) -> list[list[int | None]]:
        return [[s.start, s.end, s.pos] for s in self.segments]

    def done_bytes(self) -> int:
        return sum(s.pos - s.start for s in self.segments)

    def shown_bytes(self) -> int:
        return sum(s.pos - s.start + s.pending for s in self.segments)

    def frontier(self) -> int:
        return contiguous_frontier(self.segments)

    def all_done(self) -> bool:
        return bool(self.segments) and all(s.done for s in self.segments)

    def next_work(self, now: float, stall_seconds: float) -> Segment | None:
        """Work for an idle worker: an unassigned segment, else the whole remainder of a
        stalled one (its connection is alive but not delivering), else the upper half of
        the largest running one. None: nothing worth a connection."""
        for seg in self.segments:
            if not seg.active and not seg.done and seg.end is not None:
                seg.active = True
                seg.last_progress = now
                return seg
        busy = [s for s in self.segments if s.active and s.remaining > 0]
        if not busy:
            return None
        stalled = [s for s in busy if now - s.last_progress > stall_seconds]
        if stalled:
            victim = max(stalled, key=lambda s: s.remaining)
            new = Segment(victim.pos, victim.end, victim.pos, True, now)
            victim.end = victim.pos  # its worker stops at its next chunk
        else:
            victim = max(busy, key=lambda s: s.remaining)
            if victim.remaining < 2 * MIN_SPLIT or victim.end is None:
                return None
            mid = victim.pos + victim.remaining // 2
            mid -= mid % SPLIT_ALIGN
            new = Segment(mid, victim.end, mid, True, now)
            victim.end = mid
        self._insert(new)
        return new

    def _ramp_victim(self) -> Segment | None:
        busy = [s for s in self.segments if s.active and s.remaining > 0 and s.end is not None]
        return max(busy, key=lambda s: s.remaining) if busy else None

    def ramp_room(self, free: int) -> int:
        """How many more workers the largest running segment has room for (each piece at
        least MIN_SPLIT), at most ``free``."""
        victim = self._ramp_victim()
        if victim is None:
            return 0
        return max(0, min(free, victim.remaining // MIN_SPLIT - 1))

    def ramp_split(self, pieces: int) -> int:
        """Split the largest running segment into ``pieces`` equal parts, the new ones
        unassigned. Returns how many workers to start for them."""
        victim = self._ramp_victim()
        if victim is None or victim.end is None or pieces < 2:
            return 0
        step = victim.remaining // pieces
        cuts = [victim.pos + i * step for i in range(1, pieces)]
        cuts = [c - c % SPLIT_ALIGN for c in cuts]
        bounds = [*cuts, victim.end]
        for start, end in zip(cuts, bounds[1:], strict=True):
            self.segments.append(Segment(start, end, start))
        victim.end = cuts[0]
        self.segments.sort(key=lambda s: s.start)
        return pieces - 1

    def _insert(self, seg: Segment) -> None:
        self.segments.append(seg)
        self.segments.sort(key=lambda s: s.start)
