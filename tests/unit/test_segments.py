"""The segment table (core/segments.py): pieces, split, steal, take-over, ramp, frontier,
compaction and the checkpoint it writes."""

from __future__ import annotations

import pytest

from modelfetch.core.segments import (
    MAX_PIECE,
    MIN_PIECE,
    MIN_SPLIT,
    SPLIT_ALIGN,
    Segment,
    SegmentTable,
    contiguous_frontier,
    piece_size,
    validate_segments,
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
    "total, connections, piece",
    [
        (1, 8, SPLIT_ALIGN),
        (40 * MB, 4, 10 * MB),  # a small file: one equal share per connection
        (48 * MB, 6, 8 * MB),
        (100 * MB, 8, 13 * MB),  # shares are aligned up
        (3 * MIN_SPLIT - 1, 8, 12 * MB),  # no share below MIN_SPLIT
        (1024 * MB, 8, MAX_PIECE),  # a large one: pieces
        (100 * MB + 7, 4, MAX_PIECE),
        (100 * MB, 1, 100 * MB),  # one connection: all of it, in one request
        (None, 8, MAX_PIECE),
        (None, 1, MAX_PIECE),
    ],
)
def test_piece_size(total: int | None, connections: int, piece: int) -> None:
    assert piece_size(total, connections) == piece


@pytest.mark.parametrize(
    "before, piece, taken, after",
    [
        # lowest unassigned first; the rest stays unassigned
        (
            [(0, 64 * MB, 0)],
            16 * MB,
            (0, 16 * MB, 0),
            [(0, 16 * MB, 0), (16 * MB, 64 * MB, 16 * MB)],
        ),
        (
            [(0, 16 * MB, 16 * MB), (16 * MB, 64 * MB, 16 * MB)],
            16 * MB,
            (16 * MB, 32 * MB, 16 * MB),
            [(0, 16 * MB, 16 * MB), (16 * MB, 32 * MB, 16 * MB), (32 * MB, 64 * MB, 32 * MB)],
        ),
        # a remainder below MIN_PIECE goes with the piece
        ([(0, 17 * MB, 0)], 16 * MB, (0, 17 * MB, 0), [(0, 17 * MB, 0)]),
        # a resumed segment keeps what it holds; the cut is aligned up past its position
        (
            [(0, 64 * MB, 5 * MB + 7)],
            16 * MB,
            (0, 22 * MB, 5 * MB + 7),
            [(0, 22 * MB, 5 * MB + 7), (22 * MB, 64 * MB, 22 * MB)],
        ),
        # one connection takes everything that is left
        ([(0, 64 * MB, 0)], 64 * MB, (0, 64 * MB, 0), [(0, 64 * MB, 0)]),
    ],
)
def test_next_piece(
    before: list[tuple[int, int, int]],
    piece: int,
    taken: tuple[int, int, int],
    after: list[tuple[int, int, int]],
) -> None:
    table = SegmentTable([Segment(*t) for t in before], piece)
    seg = table.next_piece(now=3.0)
    assert seg is not None and seg.active and seg.last_progress == 3.0
    assert (seg.start, seg.end, seg.pos) == taken
    assert spans(table.segments) == after and tiles(table.segments, after[-1][1])
    assert [s.active for s in table.segments] == [s is seg for s in table.segments]


def test_next_piece_when_everything_is_assigned() -> None:
    table = SegmentTable([Segment(0, 10 * MB, 10 * MB), Segment(10 * MB, 24 * MB, 12 * MB, True)])
    assert table.next_piece(now=0.0) is None
    assert table.next_work(now=0.0, stall_seconds=5.0) is None  # 12 MB left: too small to split


def test_cut_leaves_nothing_too_small() -> None:
    seg = Segment(0, 16 * MB + MIN_PIECE - 1, 0)
    table = SegmentTable([seg])
    assert not table.cut(seg, 16 * MB) and spans(table.segments) == [(0, seg.end, 0)]
    assert not SegmentTable([Segment(0, None, 0)]).cut(Segment(0, None, 0), MB)


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
        (256 * MB, 7, 7),
        (64 * MB, 7, 3),  # 16 MiB pieces: three more after the running one's
        (64 * MB, 2, 2),  # the workers that are free (or granted) bound it
        (3 * MIN_SPLIT, 8, 1),
        (2 * MIN_SPLIT - 1, 8, 0),  # too little left to share
        (64 * MB, 0, 0),
    ],
)
def test_ramp_room(remaining: int, free: int, room: int) -> None:
    table = SegmentTable([Segment(0, remaining, 0, active=True)], 16 * MB)
    assert table.ramp_room(free) == room


@pytest.mark.parametrize(
    "pos, kept_end",
    [(0, 16 * MB), (3 * MB + 5, 20 * MB)],  # one piece past the position, aligned up
)
def test_ramp_cut_leaves_the_stream_one_piece(pos: int, kept_end: int) -> None:
    first = Segment(0, 64 * MB, pos, active=True)
    table = SegmentTable([first], 16 * MB)
    assert table.ramp_cut()
    assert spans(table.segments) == [(0, kept_end, pos), (kept_end, 64 * MB, kept_end)]
    assert first.active and not table.segments[1].active


def test_ramp_without_running_work() -> None:
    assert SegmentTable([Segment(0, 64 * MB, 0)]).ramp_room(8) == 0
    assert not SegmentTable([Segment(0, 64 * MB, 0)]).ramp_cut()
    assert SegmentTable([Segment(0, None, 0, active=True)]).ramp_room(8) == 0
    small = SegmentTable([Segment(0, 2 * MIN_SPLIT - 1, 0, active=True)])
    assert not small.ramp_cut() and len(small.segments) == 1


def settled(start: int, end: int) -> Segment:
    return Segment(start, end, end, written_back=end)


@pytest.mark.parametrize(
    "segments, merged",
    [
        (
            [settled(0, 16), settled(16, 32), Segment(32, 48, 40, active=True)],
            [(0, 32, 32), (32, 48, 40)],
        ),
        # a finished piece whose worker still holds it, or whose writeback has not been
        # started, stays apart
        (
            [settled(0, 16), Segment(16, 32, 32, active=True, written_back=32), settled(32, 48)],
            [(0, 16, 16), (16, 32, 32), (32, 48, 48)],
        ),
        ([settled(0, 16), Segment(16, 32, 32, written_back=20)], [(0, 16, 16), (16, 32, 32)]),
        ([settled(0, 16), Segment(16, 32, 20)], [(0, 16, 16), (16, 32, 20)]),
    ],
)
def test_compact_merges_settled_neighbours(
    segments: list[Segment], merged: list[tuple[int, int, int]]
) -> None:
    table = SegmentTable(segments)
    shared = table.segments
    table.compact()
    assert spans(table.segments) == merged and table.segments is shared


@pytest.mark.parametrize(
    "segments, checkpoint",
    [
        ([(0, 10, 10), (10, 30, 15)], [[0, 30, 15]]),  # a finished one folds into the next
        ([(0, 16, 16), (16, 32, 32), (32, 48, 40), (48, 64, 48)], [[0, 48, 40], [48, 64, 48]]),
        ([(0, 16, 8), (16, 32, 32), (32, 48, 32)], [[0, 16, 8], [16, 48, 32]]),
        ([(0, 16, 16), (16, 32, 32)], [[0, 32, 32]]),
        ([(0, None, 7)], [[0, None, 7]]),
    ],
)
def test_snapshot_folds_finished_segments(
    segments: list[tuple[int, int | None, int]], checkpoint: list[list[int | None]]
) -> None:
    table = SegmentTable([Segment(*t) for t in segments])
    assert table.snapshot() == checkpoint
    total = segments[-1][1]
    restored = validate_segments(checkpoint, total)
    assert restored is not None and contiguous_frontier(restored) == table.frontier()


def test_bookkeeping() -> None:
    table = SegmentTable([Segment(0, 10, 10), Segment(10, 30, 15, pending=3)])
    assert table.done_bytes() == 15 and table.shown_bytes() == 18
    assert table.snapshot() == [[0, 30, 15]]
    assert not table.all_done() and not SegmentTable([]).all_done()
    assert SegmentTable([Segment(0, 10, 10)]).all_done()
