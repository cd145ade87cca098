"""The lease rules and the chunk ledger, table-tested without sockets: the store here is an
in-memory implementation of lease.LeaseStore that can enforce conditional writes or, like
some object stores under concurrency, ignore them. (The same rules against a real
SeaweedFS: test_fleet.py.)"""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace

import pytest

from modelfetch.lease import (
    MAX_SKEW,
    ChunkRef,
    Held,
    Lease,
    Watch,
    decode_lease,
    new_token,
    release,
    renew,
    take,
    take_over,
)
from modelfetch.tierstream import ChunkLedger, Manifest, decode_manifest, pick_chunk_size

MiB = 1024 * 1024


class MemoryStore:
    """One object with an ETag; ``enforce=False`` accepts every write, as a store that
    ignores If-None-Match / If-Match does."""

    def __init__(self, enforce: bool = True) -> None:
        self.enforce = enforce
        self.body: bytes | None = None
        self.etag: str | None = None
        self.writes = 0

    def read(self) -> tuple[bytes, str] | None:
        return None if self.body is None or self.etag is None else (self.body, self.etag)

    def create(self, body: bytes) -> str | None:
        if self.enforce and self.body is not None:
            return None
        return self._put(body)

    def swap(self, body: bytes, etag: str) -> str | None:
        if self.enforce and etag != self.etag:
            return None
        return self._put(body)

    def remove(self) -> None:
        self.body = self.etag = None

    def _put(self, body: bytes) -> str:
        self.writes += 1
        self.body, self.etag = body, f'"{self.writes}"'
        return self.etag


def lease(**changes: object) -> Lease:
    base = Lease(token=new_token(), owner="host:1:abc", ttl=10.0, chunk_size=MiB, wall=1000.0)
    return replace(base, **changes)  # type: ignore[arg-type]


def no_sleep(seconds: float) -> None:
    pass


# -- take, confirm, renew, take over, release ------------------------------------------
def test_enforcing_store_has_one_winner() -> None:
    store = MemoryStore()
    a, b = lease(), lease()
    held = take(store, a, 0.2, no_sleep)
    assert held is not None and held.lease.token == a.token
    assert take(store, b, 0.2, no_sleep) is None


@pytest.mark.parametrize("enforce", [True, False])
def test_racing_takes_confirm_only_the_stored_token(enforce: bool) -> None:
    """B writes while A waits to confirm: whatever the store did with the conditions, at
    most one of them leads, and it is the one whose token is stored."""
    store = MemoryStore(enforce)
    a, b = lease(), lease()
    outcome: dict[str, Held | None] = {}

    def a_settles(seconds: float) -> None:
        assert seconds == 0.2
        outcome["b"] = take(store, b, 0.2, no_sleep)

    outcome["a"] = take(store, a, 0.2, a_settles)
    stored = decode_lease(store.body or b"")
    assert stored is not None
    winners = [k for k, v in outcome.items() if v is not None]
    assert len(winners) == 1
    assert outcome[winners[0]] is not None
    assert outcome[winners[0]].lease.token == stored.token  # type: ignore[union-attr]
    assert winners == (["a"] if enforce else ["b"])


def test_take_over_replaces_only_the_lease_judged_dead() -> None:
    store = MemoryStore()
    old = take(store, lease(), 0, no_sleep)
    assert old is not None
    seen_dead = old.etag
    renewed = renew(store, old, old.lease.next_beat(1001.0))  # it was alive after all
    assert renewed is not None
    assert take_over(store, lease(), seen_dead, 0, no_sleep) is None
    successor = take_over(store, lease(), renewed.etag, 0, no_sleep)
    assert successor is not None
    # the old holder finds out at its next renewal, and its release leaves the new lease
    assert renew(store, renewed, renewed.lease.next_beat(1002.0)) is None
    release(store, renewed)
    current = store.read()
    assert current is not None and decode_lease(current[0]) == successor.lease
    release(store, successor)
    assert store.read() is None


def test_renew_on_a_store_ignoring_conditions_still_checks_the_token() -> None:
    store = MemoryStore(enforce=False)
    a = take(store, lease(), 0, no_sleep)
    assert a is not None
    b = take_over(store, lease(), "whatever", 0, no_sleep)
    assert b is not None
    assert renew(store, a, a.lease.next_beat(1.0)) is None  # A must not resurrect its lease
    current = store.read()
    assert current is not None and decode_lease(current[0]) == b.lease


# -- liveness ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("observations", "now", "wall", "dead"),
    [
        # (monotonic time, etag) pairs the follower saw; the lease's wall clock is 1000
        ([(0.0, "a")], 9.9, 1005.0, False),  # not yet a ttl without a change
        ([(0.0, "a")], 10.0, 1005.0, True),  # a whole ttl without a change
        ([(0.0, "a"), (8.0, "b")], 17.0, 1005.0, False),  # renewed at 8
        ([(0.0, "a"), (8.0, "a")], 10.0, 1005.0, True),  # the same ETag again is no renewal
        ([(0.0, "a")], 0.1, 1000.0 + 10 + MAX_SKEW + 1, True),  # abandoned long ago
        ([(0.0, "a")], 0.1, 1000.0 + 10 + MAX_SKEW - 1, False),  # maybe just skewed clocks
        ([(0.0, "a")], 0.1, 0.0, False),  # its clock runs ahead of ours: ignore the wall
    ],
)
def test_watch_judges_liveness_by_its_own_clock(
    observations: list[tuple[float, str]], now: float, wall: float, dead: bool
) -> None:
    held = lease()
    watch = Watch()
    for when, etag in observations:
        watch.see(held, etag, when)
    assert watch.dead(held, now, wall, garbage_ttl=5) is dead


def test_unreadable_lease_dies_after_the_garbage_ttl() -> None:
    watch = Watch()
    watch.see(None, "x", 0.0)
    assert not watch.dead(None, 4.9, 0.0, garbage_ttl=5)
    assert watch.dead(None, 5.0, 0.0, garbage_ttl=5)


def test_stall_is_measured_by_progress_not_by_heartbeats() -> None:
    watch = Watch()
    base = lease(size=10 * MiB)
    for second in range(0, 30):
        watch.see(replace(base, beat=second), f"e{second}", float(second))  # alive, no progress
    assert watch.stalled(29.0, 29.0) and not watch.dead(base, 29.0, 1000.0, 5)
    watch.see(replace(base, beat=31, done=MiB), "e31", 31.0)
    assert not watch.stalled(40.0, 29.0)


# -- hostile documents ---------------------------------------------------------------------
def test_lease_round_trips() -> None:
    ref = ChunkRef("0123456789abcdef", "ab" * 32)
    full = lease(size=3 * MiB, sha256="cd" * 32, etag='"x"', done=MiB, chunks=(ref,), beat=3)
    assert decode_lease(full.encode()) == full
    sparse = replace(full, chunks=(None, ref, None))  # a parallel download's chunks
    assert decode_lease(sparse.encode()) == sparse and sparse.published == 1


def _doc(**changes: object) -> bytes:
    doc = json.loads(lease(size=2 * MiB).encode())
    doc.update(changes)
    return json.dumps(doc).encode()


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b"null",
        b"[" * 100_000,
        b'{"modelfetch_lease": 2}',
        _doc(token="../../etc"),
        _doc(token=7),
        _doc(ttl="10"),
        _doc(ttl=float("nan")),
        _doc(wall=True),
        _doc(chunk_size=1),
        _doc(chunk_size=2**40),
        _doc(size=-1),
        _doc(size=2**60),
        _doc(sha256="XYZ"),
        _doc(done=-5),
        _doc(beat=None),
        _doc(owner="a\x1b[31mb"),
        _doc(owner="x" * 500),
        _doc(chunks="nope"),
        _doc(chunks=[["0123456789abcdef", "ab" * 32]] * 3),  # more than 2 MiB holds
        _doc(chunks=[["../x", "ab" * 32]]),
        _doc(chunks=[["0123456789abcdef", "AB" * 32]]),
        _doc(chunks=[["0123456789abcdef"]]),
        _doc(size=None, chunks=[["0123456789abcdef", "ab" * 32]]),
        b" " * (2 * MiB),
    ],
)
def test_hostile_leases_are_unreadable(data: bytes) -> None:
    assert decode_lease(data) is None


def test_lease_ttl_is_clamped() -> None:
    assert (decode_lease(_doc(ttl=0.001)) or lease()).ttl == 1.0
    assert (decode_lease(_doc(ttl=1e12)) or lease()).ttl == 600.0


def test_manifest_must_describe_the_whole_file() -> None:
    refs = tuple(ChunkRef("0123456789abcdef", f"{i:02x}" * 32) for i in range(3))
    good = Manifest(3 * MiB - 5, "ee" * 32, MiB, refs, "a" * 40)
    assert decode_manifest(good.encode()) == good
    assert decode_manifest(replace(good, chunks=refs[:2]).encode()) is None
    gap = json.loads(good.encode())
    gap["chunks"][1] = None
    assert decode_manifest(json.dumps(gap).encode()) is None
    assert decode_manifest(replace(good, size=4 * MiB).encode()) is None
    odd = json.loads(good.encode())
    odd["commit"] = "../../x"
    assert decode_manifest(json.dumps(odd).encode()) == replace(good, commit=None)
    assert decode_manifest(b'{"modelfetch_manifest": 1}') is None


@pytest.mark.parametrize(
    ("wanted", "size", "picked"),
    [
        (16 * MiB, None, 16 * MiB),
        (16 * MiB, 100 * MiB, 16 * MiB),
        (256 * 1024, 4 * MiB, 256 * 1024),
        (16 * MiB, 100 * 1024 * MiB, 100 * MiB),  # 100 GiB: 1024 chunks of 100 MiB
        (16 * MiB, 17 * 1024 * MiB + 1, 18 * MiB),  # rounded up to whole MiB
    ],
)
def test_chunk_size_grows_for_huge_files(wanted: int, size: int | None, picked: int) -> None:
    assert pick_chunk_size(wanted, size) == picked


# -- the ledger: chunk hashes always describe the bytes the download verified ------------
DATA = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
CHUNK = 1024 * 1024


def shas_of(data: bytes, size: int = CHUNK) -> list[str]:
    return [hashlib.sha256(data[i : i + size]).hexdigest() for i in range(0, len(data), size)]


def feed(ledger: ChunkLedger, data: bytes, start: int = 0, end: int | None = None) -> None:
    end = len(data) if end is None else end
    for offset in range(start, end, 300_000):  # pieces that do not line up with chunks
        ledger.feed(offset, data[offset : min(end, offset + 300_000)], len(data))


def test_ledger_cuts_an_in_order_pass_into_chunks() -> None:
    ledger = ChunkLedger(CHUNK)
    feed(ledger, DATA)
    assert ledger.shas == shas_of(DATA)  # the short last chunk closes at the known total
    assert ledger.finish(len(DATA)) and ledger.shas == shas_of(DATA)


def test_ledger_replay_of_the_same_bytes_keeps_the_chunks() -> None:
    ledger = ChunkLedger(CHUNK)
    feed(ledger, DATA, 0, 1_500_000)  # a retry re-hashes the kept part from offset 0
    feed(ledger, DATA)
    assert ledger.finish(len(DATA)) and ledger.shas == shas_of(DATA)


def test_ledger_replay_with_other_bytes_drops_what_changed() -> None:
    ledger = ChunkLedger(CHUNK)
    feed(ledger, DATA, 0, 2 * CHUNK)
    assert len(ledger.shas) == 2
    changed = DATA[: CHUNK + 10] + b"X" + DATA[CHUNK + 11 :]
    feed(ledger, changed, 0, 2 * CHUNK - 1)
    assert ledger.shas == shas_of(DATA)[:2]  # chunk 1 is re-checked when the pass ends it
    feed(ledger, changed, 2 * CHUNK - 1)
    assert shas_of(changed)[1] != shas_of(DATA)[1]
    assert ledger.finish(len(changed)) and ledger.shas == shas_of(changed)


def test_ledger_forgets_everything_on_restart_and_breaks_on_a_gap() -> None:
    ledger = ChunkLedger(CHUNK)
    feed(ledger, DATA, 0, 2 * CHUNK)
    ledger.restart()
    assert ledger.shas == [] and ledger.pos == 0
    ledger.feed(5, DATA[5:10], len(DATA))  # bytes that skip ahead: out of step
    assert ledger.broken and not ledger.finish(len(DATA))


def test_ledger_grows_its_chunk_size_for_a_huge_file_only_before_the_first_chunk() -> None:
    huge = 3000 * MiB  # 1024 chunks of at least 3 MiB
    ledger = ChunkLedger(CHUNK, adjustable=True)
    ledger.feed(0, DATA[:10], huge)
    assert ledger.chunk_size == 3 * MiB
    fixed = ChunkLedger(CHUNK)
    fixed.feed(0, DATA[:10], huge)
    assert fixed.chunk_size == CHUNK


def test_ledger_finish_needs_the_whole_file() -> None:
    ledger = ChunkLedger(CHUNK)
    feed(ledger, DATA, 0, 2 * CHUNK)
    assert not ledger.finish(len(DATA))
