"""The segment table (core/segments.py): split, steal, take-over, ramp, frontier."""

from __future__ import annotations

import pytest

from modelfetch.core.segments import (
    MIN_SPLIT,
    SPLIT_ALIGN,
    Segment,
    SegmentTable,
    contiguous_frontier,
    split_segments,
)

MB = 1024 * 1024


def spans(segments: list[Segment]) -> list[tuple[int, int | None, int]]:
    return [(s.start, s.end, s.pos) for s in segments]


def tiles(segments: list[Segment], total: int) -> bool:
    """No gap, no overlap, [0, total) covered."""
    edge = 0
    for seg in sorted(segments, key=lambda s: s.start):
        if seg.start != edge or seg.end is None or seg.end < seg.start:
            return False
        edge = seg.end
    return edge == total


@pytest.mark.parametrize(
    "total, connections, count",
    [
        (1, 8, 1),
        (MIN_SPLIT, 8, 1),
        (2 * MIN_SPLIT, 8, 2),
        (100 * MB, 8, 8),
        (100 * MB, 1, 1),
        (100 * MB + 7, 4, 4),
        (3 * MIN_SPLIT - 1, 8, 2),
    ],
)
def test_split_segments(total: int, connections: int, count: int) -> None:
    segments = split_segments(total, connections)
    assert len(segments) == count and tiles(segments, total)
    assert all(s.pos == s.start for s in segments)
    assert all(s.start % SPLIT_ALIGN == 0 for s in segments)


@pytest.mark.parametrize(
    "segments, frontier",
    [
        ([], 0),
        ([Segment(0, 10, 0)], 0),
        ([Segment(0, 10, 4)], 4),
        ([Segment(0, 10, 10), Segment(10, 20, 15)], 15),
        ([Segment(0, 10, 10), Segment(10, 20, 20)], 20),
        ([Segment(0, 10, 5), Segment(10, 20, 20)], 5),  # a hole stops it
        ([Segment(0, None, 7)], 7),
    ],
)
def test_contiguous_frontier(segments: list[Segment], frontier: int) -> None:
    assert contiguous_frontier(segments) == frontier
    assert SegmentTable(segments).frontier() == frontier


def test_next_work_hands_out_unassigned_segments_first() -> None:
    table = SegmentTable([Segment(0, 10, 10), Segment(10, 20, 10)])
    seg = table.next_work(now=5.0, stall_seconds=5.0)
    assert seg is table.segments[1] and seg.active and seg.last_progress == 5.0
    assert table.next_work(now=5.0, stall_seconds=5.0) is None  # too small to split


@pytest.mark.parametrize(
    "remaining, splits",
    [(2 * MIN_SPLIT, True), (2 * MIN_SPLIT - 1, False), (64 * MB, True)],
)
def test_next_work_steals_the_upper_half(remaining: int, splits: bool) -> None:
    busy = Segment(0, remaining, 0, active=True, last_progress=10.0)
    table = SegmentTable([busy])
    new = table.next_work(now=10.0, stall_seconds=5.0)
    if not splits:
        assert new is None and spans(table.segments) == [(0, remaining, 0)]
        return
    assert new is not None and new.active and new.start == busy.end
    assert new.start % SPLIT_ALIGN == 0 and abs(new.start - remaining // 2) < SPLIT_ALIGN
    assert tiles(table.segments, remaining)


@pytest.mark.parametrize(
    "idle, stalled",
    [(5.0, False), (5.001, True), (60.0, True)],
)
def test_next_work_takes_over_a_stalled_segment(idle: float, stalled: bool) -> None:
    slow = Segment(0, 3 * MB, MB, active=True, last_progress=100.0)
    table = SegmentTable([slow])
    new = table.next_work(now=100.0 + idle, stall_seconds=5.0)
    if not stalled:
        assert new is None  # 2 MB left is too little to split, and it is not stalled
        return
    assert new is not None and (new.start, new.end, new.pos) == (MB, 3 * MB, MB)
    assert slow.end == MB and slow.done  # its worker stops at its next chunk
    assert tiles(table.segments, 3 * MB)


def test_take_over_prefers_the_largest_stalled_remainder() -> None:
    a = Segment(0, 20 * MB, 19 * MB, active=True, last_progress=0.0)
    b = Segment(20 * MB, 40 * MB, 21 * MB, active=True, last_progress=0.0)
    table = SegmentTable([a, b])
    new = table.next_work(now=60.0, stall_seconds=5.0)
    assert new is not None and new.start == 21 * MB and b.end == 21 * MB


@pytest.mark.parametrize(
    "remaining, free, room",
    [
        (64 * MB, 7, 7),
        (64 * MB, 3, 3),  # the workers that are free (or granted) bound it
        (3 * MIN_SPLIT, 8, 2),  # every piece keeps at least MIN_SPLIT
        (2 * MIN_SPLIT - 1, 8, 0),
        (64 * MB, 0, 0),
    ],
)
def test_ramp_room(remaining: int, free: int, room: int) -> None:
    table = SegmentTable([Segment(0, remaining, 0, active=True)])
    assert table.ramp_room(free) == room


@pytest.mark.parametrize("pieces, extra", [(8, 7), (4, 3), (2, 1), (1, 0)])
def test_ramp_split(pieces: int, extra: int) -> None:
    first = Segment(0, 64 * MB, 0, active=True)
    table = SegmentTable([first])
    assert table.ramp_split(pieces) == extra
    assert len(table.segments) == extra + 1 and tiles(table.segments, 64 * MB)
    assert all(not s.active for s in table.segments[1:])
    assert all(s.start % SPLIT_ALIGN == 0 for s in table.segments)


def test_ramp_without_running_work() -> None:
    assert SegmentTable([Segment(0, 64 * MB, 0)]).ramp_room(8) == 0
    assert SegmentTable([Segment(0, 64 * MB, 0)]).ramp_split(8) == 0
    assert SegmentTable([Segment(0, None, 0, active=True)]).ramp_room(8) == 0


def test_bookkeeping() -> None:
    table = SegmentTable([Segment(0, 10, 10), Segment(10, 30, 15, pending=3)])
    assert table.done_bytes() == 15 and table.shown_bytes() == 18
    assert table.snapshot() == [[0, 10, 10], [10, 30, 15]]
    assert not table.all_done() and not SegmentTable([]).all_done()
    assert SegmentTable([Segment(0, 10, 10)]).all_done()
