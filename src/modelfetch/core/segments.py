"""Segments of a part file and the pure rules that hand them out, split and take them over.

The part file is covered by *segments* that tile ``[0, total)``; each has a position up to
which its bytes are on disk. What nobody fetches yet is handed out in pieces, lowest first,
so every connection works close to the hash frontier. A worker with no piece left splits
the largest remaining segment in two, or takes over a segment whose connection stalled, so
slow tails do not hold the download back. The transfer engine (fetch/engine.py) owns the
threads and the lock; this module only decides, with the time passed in, so every rule is
testable as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

MIN_SPLIT = 8 * 1024 * 1024  # never leave a worker less than this to fetch after a split
SPLIT_ALIGN = 1024 * 1024
MAX_SEGMENTS = 4096  # a checkpoint with more is not ours
# Connections fetch a large file in pieces of at most this, lowest first, so the bytes
# ahead of the hash frontier stay within about connections x MAX_PIECE (bench/run.py, CDN
# scenario: with one long range per connection, 7/8 of the file was hashed after its last
# byte had arrived; 8 to 32 MiB were measured, 16 MiB kept the fewest requests per GiB
# among the fastest).
MAX_PIECE = 16 * 1024 * 1024
MIN_PIECE = 2 * 1024 * 1024  # a smaller remainder goes with the piece before it


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


def piece_size(total: int | None, connections: int) -> int:
    """How much of the file a connection takes at a time: equal, aligned shares of a small
    file (one per connection, none below MIN_SPLIT), at most MAX_PIECE of a large one, and
    everything left for a single connection (one request, not one per piece)."""
    if connections <= 1:
        return max(total or 0, MAX_PIECE)
    if total is None:
        return MAX_PIECE
    count = max(1, min(connections, total // MIN_SPLIT))
    size = -(-total // count)
    size += -size % SPLIT_ALIGN
    return min(size, MAX_PIECE)


class SegmentTable:
    """The segments of one transfer and the decisions about them (not thread-safe: the
    engine calls every method with its lock held)."""

    def __init__(self, segments: list[Segment], piece: int = MAX_PIECE) -> None:
        self.segments = segments
        self.piece = piece

    def snapshot(self) -> list[list[int | None]]:
        """The checkpoint: a finished segment is folded into the next one (its bytes and the
        next one's written part are contiguous), so however many pieces a large file took,
        the checkpoint lists only the unfinished ones."""
        out: list[list[int | None]] = []
        for s in self.segments:
            if out and out[-1][1] == out[-1][2] == s.start:
                out[-1][1:] = [s.end, s.pos]
            else:
                out.append([s.start, s.end, s.pos])
        return out

    def done_bytes(self) -> int:
        return sum(s.pos - s.start for s in self.segments)

    def shown_bytes(self) -> int:
        return sum(s.pos - s.start + s.pending for s in self.segments)

    def frontier(self) -> int:
        return contiguous_frontier(self.segments)

    def all_done(self) -> bool:
        return bool(self.segments) and all(s.done for s in self.segments)

    def next_piece(self, now: float) -> Segment | None:
        """The front of the lowest unassigned segment, at most one piece long, assigned; the
        rest stays unassigned. None if everything is assigned."""
        for seg in self.segments:
            if not seg.active and not seg.done and seg.end is not None:
                self.cut(seg, self.piece)
                seg.active = True
                seg.last_progress = now
                return seg
        return None

    def cut(self, seg: Segment, size: int) -> bool:
        """Shorten ``seg`` to about ``size`` bytes past its position (the cut aligned up);
        the rest becomes a new unassigned segment. False, and nothing cut, if that rest
        would be smaller than MIN_PIECE."""
        if seg.end is None:
            return False
        cut = seg.pos + size
        cut += -cut % SPLIT_ALIGN
        if seg.end - cut < MIN_PIECE:
            return False
        at = next(i for i, s in enumerate(self.segments) if s is seg)
        self.segments.insert(at + 1, Segment(cut, seg.end, cut))
        seg.end = cut
        return True

    def next_work(self, now: float, stall_seconds: float) -> Segment | None:
        """Work for an idle worker: the lowest unassigned piece, else the whole remainder of
        a stalled segment (its connection is alive but not delivering), else the upper half
        of the largest running one. None: nothing worth a connection."""
        piece = self.next_piece(now)
        if piece is not None:
            return piece
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
        """How many more workers the rest of the largest running segment has pieces for,
        at most ``free`` (none if it has less than 2 x MIN_SPLIT left)."""
        victim = self._ramp_victim()
        if victim is None or victim.remaining < 2 * MIN_SPLIT:
            return 0
        return max(0, min(free, -(-(victim.remaining - self.piece) // self.piece)))

    def ramp_cut(self) -> bool:
        """Leave the largest running segment one piece, the rest unassigned for the workers
        being added. False if there was nothing worth cutting."""
        victim = self._ramp_victim()
        return (
            victim is not None
            and victim.remaining >= 2 * MIN_SPLIT
            and self.cut(victim, self.piece)
        )

    def compact(self) -> None:
        """Merge neighbouring finished segments that no worker holds and whose writeback
        has started, so the list stays short however many pieces a large file takes."""
        merged: list[Segment] = []
        for seg in self.segments:
            prev = merged[-1] if merged else None
            if prev is not None and _settled(prev) and _settled(seg):
                prev.end = prev.pos = prev.written_back = seg.pos
            else:
                merged.append(seg)
        self.segments[:] = merged

    def _insert(self, seg: Segment) -> None:
        self.segments.append(seg)
        self.segments.sort(key=lambda s: s.start)


def _settled(seg: Segment) -> bool:
    """On disk, handed to writeback, and no worker's any more."""
    return seg.done and not seg.active and seg.written_back >= seg.pos
