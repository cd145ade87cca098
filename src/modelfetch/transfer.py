"""Moving bytes from HTTP responses into a part file: one stream or several, hashed in order.

The part file is covered by *segments* that tile ``[0, total)``; each has a position up to
which its bytes are on disk. Workers (one thread and one connection each) ``pwrite`` at
their segment's position. A worker that finishes splits the largest remaining segment in
two, or takes over a segment whose connection stalled, so slow tails do not hold the
download back (the way aria2 re-splits, but with no fixed piece list).

SHA-256 must be computed in file order. A single hasher thread does it: a chunk that lands
exactly at the hash frontier is handed over in memory (a single stream is never read back),
and data that arrived out of order is read back with ``pread`` once the frontier reaches it
(from the page cache, moments after it was written). Buffers come from a fixed pool, so
memory stays bounded whatever the file size.

Every second, and whenever the transfer stops, the segment positions are saved to the part
sidecar after an ``fdatasync``, so a killed process resumes from what is really on disk.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import mmap
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from urllib3.exceptions import HTTPError as Urllib3HTTPError

from .cancel import CancelToken
from .errors import CancelledError, DownloadError, ModelFetchError, storage_error
from .fsutil import start_writeback
from .http_client import Response, RetryableError

CHUNK = 1024 * 1024  # read size for local copies and the default for tests
# Measured on loopback (bench/run.py): one stream wants large reads to keep Python's
# per-chunk overhead small; many streams share the CPU, and smaller buffers keep RSS low.
SINGLE_STREAM_CHUNK = 4 * 1024 * 1024
PARALLEL_CHUNK = 2 * 1024 * 1024
SPARE_BUFFERS = 4
HASH_READ = 4 * 1024 * 1024
MIN_SPLIT = 8 * 1024 * 1024  # never leave a worker less than this to fetch after a split
SPLIT_ALIGN = 1024 * 1024
STALL_SECONDS = 5.0
PERSIST_SECONDS = 1.0
RAMP_SECONDS = 0.25
FLUSH_SECONDS = 1.0  # a direct-I/O buffer is written out at least this often
DIRECT_ALIGN = 4096
WRITEBACK_BYTES = 16 * 1024 * 1024

TRANSPORT_ERRORS = (Urllib3HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)


class RangeUnsupported(Exception):
    """A segment request was not answered with the exact range: use one stream instead."""


class TransferRetry(RetryableError):
    def __init__(self, message: str, progressed: bool) -> None:
        super().__init__(message)
        self.progressed = progressed


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
    if not isinstance(raw, list) or not raw or len(raw) > 4096:
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
    frontier = 0
    for seg in segments:
        if seg.start != frontier:
            break
        frontier = seg.pos
        if not seg.done:
            break
    return frontier


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class Transfer:
    """One attempt at filling a part file. Raises TransferRetry, RangeUnsupported,
    DownloadError or CancelledError; on success returns (sha256 hex, total bytes)."""

    def __init__(
        self,
        fd: int,
        segments: list[Segment],
        total: int | None,
        *,
        direct_fd: int | None = None,
        open_segment: Callable[[Segment], Response],
        persist: Callable[[list[list[int | None]]], None],
        on_bytes: Callable[[int, int | None], None],
        cancel: CancelToken | None,
        connections: int,
        ramp_below: float | None = None,
        also_hash: hashlib._Hash | None = None,
    ) -> None:
        self.fd = fd
        self.direct_fd = direct_fd
        self.segments = segments
        self.total = total
        self.open_segment = open_segment
        self.persist_cb = persist
        self.on_bytes = on_bytes
        self.cancel = cancel
        self.connections = max(1, connections)
        # None: all connections from the start. A rate (bytes/s): start with one stream and
        # add the others only if it delivers less than that after RAMP_SECONDS.
        self.ramp_below = ramp_below if self.connections > 1 else None
        self.cond = threading.Condition()
        self.claim = 0  # end of the bytes hashed or queued for hashing
        self.hash_queue: deque[tuple[memoryview, int]] = deque()
        self.hasher = hashlib.sha256()
        self.also_hash = also_hash  # a second digest fed the same bytes (a git blob id)
        self.hash_done = False
        self.abort = False
        self.error: BaseException | None = None
        single_start = self.connections == 1 or self.ramp_below is not None
        self.chunk = SINGLE_STREAM_CHUNK if single_start else PARALLEL_CHUNK
        # LIFO: the buffer just handed back is reused first, so the pages actually touched
        # (the RSS) stay at what the pipeline needs rather than the whole pool.
        self.pool: queue.LifoQueue[memoryview] = queue.LifoQueue()
        self._maps: list[mmap.mmap] = []
        self._add_buffers(1 if single_start else self.connections, self.chunk)
        self.initial_done = sum(s.pos - s.start for s in segments)
        self.running = 0
        self.live: dict[int, Response] = {}  # worker thread id -> its open response

    # -- bookkeeping (call with self.cond held) --------------------------------------------
    def _done_bytes(self) -> int:
        return sum(s.pos - s.start for s in self.segments)

    def _shown_bytes(self) -> int:
        return sum(s.pos - s.start + s.pending for s in self.segments)

    def _snapshot(self) -> list[list[int | None]]:
        return [[s.start, s.end, s.pos] for s in self.segments]

    def _next_work(self) -> Segment | None:
        for seg in self.segments:
            if not seg.active and not seg.done and seg.end is not None:
                seg.active = True
                seg.last_progress = time.monotonic()
                return seg
        busy = [s for s in self.segments if s.active and s.remaining > 0]
        if not busy:
            return None
        now = time.monotonic()
        stalled = [s for s in busy if now - s.last_progress > STALL_SECONDS]
        if stalled:
            # Take the whole remainder: its connection is alive but not delivering.
            victim = max(stalled, key=lambda s: s.remaining)
            new = Segment(victim.pos, victim.end, victim.pos, True, now)
            victim.end = victim.pos  # its worker stops at its next chunk
        else:
            victim = max(busy, key=lambda s: s.remaining)
            if victim.remaining < 2 * MIN_SPLIT:
                return None
            assert victim.end is not None
            mid = victim.pos + victim.remaining // 2
            mid -= mid % SPLIT_ALIGN
            new = Segment(mid, victim.end, mid, True, now)
            victim.end = mid
        self.segments.append(new)
        self.segments.sort(key=lambda s: s.start)
        return new

    def _ramp_up(self) -> int:
        """Split the largest remaining segment into equal unassigned pieces for new workers.
        Returns how many workers to start."""
        busy = [s for s in self.segments if s.active and s.remaining > 0]
        if not busy:
            return 0
        victim = max(busy, key=lambda s: s.remaining)
        assert victim.end is not None
        pieces = min(self.connections, victim.remaining // MIN_SPLIT)
        if pieces < 2:
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

    def _work_or_exit(self) -> Segment | None:
        """Next piece of work; while other segments are still running, linger so a stall
        that starts later can still be rescued. None: the transfer needs no more workers."""
        while True:
            seg = self._next_work()
            if seg is not None or self.abort or all(s.done for s in self.segments):
                return seg
            self.cond.wait(0.25)

    # -- threads ---------------------------------------------------------------------------
    def _pump(self, resp: Response, seg: Segment) -> None:
        """Move one response's body into the segment.

        Buffered mode writes every read. Direct mode (O_DIRECT) fills a page-aligned buffer
        and writes whole aligned blocks, carrying an unaligned remainder (< 4 KiB) into the
        next buffer, so bytes skip the page cache and need no writeback at the end. Either
        way a segment's position only moves after its bytes are written.
        """
        with self.cond:
            # Only bytes at the hash frontier skip the page cache: they are hashed from the
            # buffer. Bytes that arrive ahead of it are read back for hashing, cheaply,
            # from the page cache.
            at_frontier = contiguous_frontier(self.segments) >= seg.pos
        direct = self.direct_fd is not None and seg.pos % DIRECT_ALIGN == 0 and at_frontier
        buf = self._buffer()
        fill = 0
        since = time.monotonic()
        try:
            while buf is not None:
                if self.cancel is not None and self.cancel.cancelled:
                    self._cancelled()
                with self.cond:
                    if self.abort:
                        return
                    limit = None if seg.end is None else seg.end - seg.pos
                if limit is not None and limit - fill <= 0:
                    return
                room = len(buf) - fill
                want = room if limit is None else min(room, limit - fill)
                n = resp.readinto(buf[fill : fill + want], bounded=limit is not None)
                if not n:
                    if seg.end is None:
                        buf, fill = self._flush(seg, buf, fill, direct=False, final=True)
                        with self.cond:
                            seg.end = seg.pos
                            self.total = seg.pos
                            self.cond.notify_all()
                    return
                fill += n
                now = time.monotonic()
                with self.cond:
                    seg.last_progress = now  # bytes are arriving: not stalled
                    seg.pending = fill
                final = limit is not None and fill >= limit
                if not direct or final or fill == len(buf) or now - since >= FLUSH_SECONDS:
                    buf, fill = self._flush(seg, buf, fill, direct=direct, final=final)
                    since = now
                    with self.cond:
                        seg.pending = fill
        finally:
            with self.cond:
                seg.pending = 0
            if buf is not None:
                if fill:  # keep what arrived before a stop, written the plain way
                    buf, fill = self._flush(seg, buf, fill, direct=False, final=True)
                if buf is not None:
                    self.pool.put(buf)

    def _flush(
        self, seg: Segment, buf: memoryview, fill: int, *, direct: bool, final: bool
    ) -> tuple[memoryview | None, int]:
        """Write ``buf[:fill]`` at the segment's position; return (buffer to go on with,
        bytes already in it)."""
        with self.cond:
            offset = seg.pos
            allowed = fill if seg.end is None else min(fill, seg.end - offset)
        if allowed <= 0:
            return buf, 0  # the segment was taken over; its new owner fetches these bytes
        size = allowed if (final or not direct) else allowed - allowed % DIRECT_ALIGN
        if size == 0:
            return buf, fill
        if direct and self.direct_fd is not None:
            aligned = size - size % DIRECT_ALIGN
            try:
                pwrite_all(self.direct_fd, buf[:aligned], offset)
            except OSError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                self.direct_fd = None  # the filesystem refuses O_DIRECT after all
                aligned = 0
            pwrite_all(self.fd, buf[aligned:size], offset + aligned)
        else:
            pwrite_all(self.fd, buf[:size], offset)
        carry = allowed - size
        nxt: memoryview | None = None
        if carry:
            nxt = self._buffer()
            if nxt is not None:
                nxt[:carry] = buf[size:allowed]
        with self.cond:
            if seg.pos == offset:  # a stall take-over may have moved on meanwhile
                seg.pos += size
            if offset == self.claim:
                self.hash_queue.append((buf, size))
                self.claim += size
                handed = True
            else:
                handed = False
            self.cond.notify_all()
        if not handed:
            if nxt is None and not carry:
                return buf, 0
            self.pool.put(buf)
        if nxt is None and not carry:
            nxt = self._buffer()
        return nxt, carry if nxt is not None else 0

    def _buffer(self) -> memoryview | None:
        while True:
            try:
                return self.pool.get(timeout=0.25)
            except queue.Empty:
                with self.cond:
                    if self.abort:
                        return None

    def _worker(self, seg: Segment | None, resp: Response | None) -> None:
        try:
            if seg is None:
                with self.cond:
                    seg = self._next_work()
            while seg is not None:
                try:
                    if resp is None:
                        resp = self.open_segment(seg)
                    with self.cond:
                        self.live[threading.get_ident()] = resp
                    self._pump(resp, seg)
                except TRANSPORT_ERRORS as exc:
                    with self.cond:
                        taken_over = seg.done
                    if not taken_over:  # a stalled connection whose work moved on is no error
                        raise TransferRetry(
                            f"connection lost ({type(exc).__name__})", progressed=True
                        ) from None
                finally:
                    with self.cond:
                        self.live.pop(threading.get_ident(), None)
                    if resp is not None:
                        resp.close()
                        resp = None
                with self.cond:
                    if self.abort:
                        return
                    if seg.end is not None and seg.pos < seg.end:
                        raise TransferRetry(
                            f"connection ended early at byte {seg.pos}", progressed=True
                        )
                    seg.active = False
                    seg = self._work_or_exit()
        except BaseException as exc:
            if isinstance(exc, OSError) and not isinstance(exc, TRANSPORT_ERRORS):
                exc = storage_error(exc, "the partial file")
            with self.cond:
                if self.error is None:
                    self.error = exc
                self.abort = True
                self.cond.notify_all()
        finally:
            if resp is not None:
                resp.close()
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def _hash_loop(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        if self.hash_queue:
                            buf, n = self.hash_queue.popleft()
                            start = -1
                            break
                        frontier = contiguous_frontier(self.segments)
                        if frontier > self.claim:
                            start = self.claim
                            n = min(frontier - start, HASH_READ)
                            self.claim += n
                            break
                        if self.total is not None and self.claim >= self.total:
                            self.hash_done = True
                            self.cond.notify_all()
                            return
                        if self.abort:
                            return
                        self.cond.wait(0.25)
                if start < 0:
                    self.hasher.update(buf[:n])
                    if self.also_hash is not None:
                        self.also_hash.update(buf[:n])
                    self.pool.put(buf)
                else:
                    while n > 0:
                        data = os.pread(self.fd, min(n, HASH_READ), start)
                        if not data:
                            raise DownloadError("partial file is shorter than what was written")
                        self.hasher.update(data)
                        if self.also_hash is not None:
                            self.also_hash.update(data)
                        start += len(data)
                        n -= len(data)
        except BaseException as exc:
            with self.cond:
                self.error = self.error or exc
                self.abort = True
                self.cond.notify_all()

    # -- coordinator (the caller's thread) --------------------------------------------------
    def run(self, first: tuple[Segment, Response] | None) -> tuple[str, int]:
        threads: list[threading.Thread] = []
        hasher = threading.Thread(target=self._hash_loop, name="modelfetch-hash", daemon=True)
        hasher.start()
        with self.cond:
            assignments: list[tuple[Segment | None, Response | None]] = []
            if first is not None:
                first[0].active = True
                first[0].last_progress = time.monotonic()
                assignments.append(first)
            start_with = (
                1 if self.ramp_below is not None and first is not None else self.connections
            )
            while len(assignments) < start_with:
                seg = self._next_work()
                if seg is None:
                    break
                assignments.append((seg, None))
            self.running = len(assignments)
        for seg, resp in assignments:
            t = threading.Thread(target=self._worker, args=(seg, resp), daemon=True)
            t.start()
            threads.append(t)
        last_persist = started = time.monotonic()
        ramp_pending = self.ramp_below is not None and first is not None
        try:
            while True:
                with self.cond:
                    self.cond.wait(0.1)
                    running, done = self.running, self._shown_bytes()
                    finished = running == 0
                    if running and self.segments and all(s.done for s in self.segments):
                        # Everything is on disk; only connections whose work was taken
                        # over are left, possibly stuck in recv(). Wake them up.
                        self.abort = True
                        for stuck in self.live.values():
                            stuck.abort()
                if self.cancel is not None and self.cancel.cancelled:
                    self._cancelled()
                self.on_bytes(done, self.total)
                if finished:
                    break
                elapsed = time.monotonic() - started
                if ramp_pending and elapsed >= RAMP_SECONDS:
                    ramp_pending = False
                    assert self.ramp_below is not None
                    if (done - self.initial_done) / elapsed < self.ramp_below:
                        threads.extend(self._spawn_more())
                self._start_writeback()
                if time.monotonic() - last_persist >= PERSIST_SECONDS:
                    try:
                        self._persist()
                    except ModelFetchError as exc:  # a full disk: stop the workers too
                        self._abort(exc)
                    last_persist = time.monotonic()
        finally:
            for t in threads:
                t.join()
        with self.cond:
            if self.error is None and not all(s.done for s in self.segments):
                self.error = TransferRetry("a segment was left unfinished", progressed=True)
            if self.error is None and self.total is None:
                self.error = DownloadError("internal error: length unknown after the body ended")
        if self.error is None:
            hasher.join()
        else:
            with self.cond:
                self.abort = True
                self.cond.notify_all()
            hasher.join()
        try:
            self._persist()
        except ModelFetchError:
            if self.error is None:
                raise  # otherwise the first error is the one to report
        if self.error is not None:
            error = self.error
            if isinstance(error, TransferRetry):
                with self.cond:
                    error.progressed = self._done_bytes() > self.initial_done
            raise error
        if not self.hash_done or self.total is None:
            raise DownloadError("internal error: transfer ended before the hash caught up")
        self.on_bytes(self.total, self.total)
        return self.hasher.hexdigest(), self.total

    def _add_buffers(self, workers: int, size: int) -> None:
        spare = SPARE_BUFFERS if not self._maps else 0
        for _ in range(workers + spare):
            m = mmap.mmap(-1, size)  # anonymous mmaps are page-aligned, as O_DIRECT needs
            self._maps.append(m)
            self.pool.put(memoryview(m))

    def _start_writeback(self) -> None:
        """Get the kernel writing every segment's new bytes to disk while more arrive, so
        the final fdatasync has little left (direct-I/O bytes are on disk already)."""
        with self.cond:
            ranges = []
            for seg in self.segments:
                if seg.written_back < seg.start:
                    seg.written_back = seg.start
                if seg.pos - seg.written_back >= WRITEBACK_BYTES:
                    ranges.append((seg.written_back, seg.pos - seg.written_back))
                    seg.written_back = seg.pos
        for offset, length in ranges:
            start_writeback(self.fd, offset, length)

    def _spawn_more(self) -> list[threading.Thread]:
        with self.cond:
            if self.abort:
                return []
            extra = self._ramp_up()
            self.running += extra
        self._add_buffers(extra, PARALLEL_CHUNK)
        threads = [
            threading.Thread(target=self._worker, args=(None, None), daemon=True)
            for _ in range(extra)
        ]
        for t in threads:
            t.start()
        return threads

    def _cancelled(self) -> None:
        self._abort(CancelledError("cancelled by the caller; partial data is kept for resume"))

    def _abort(self, error: BaseException) -> None:
        with self.cond:
            self.abort = True
            self.error = self.error or error
            self.cond.notify_all()

    def _persist(self) -> None:
        with self.cond:
            snapshot = self._snapshot()
        try:
            os.fdatasync(self.fd)  # positions are only recorded for bytes that are on disk
        except OSError as exc:
            raise storage_error(exc, "the partial file") from None
        self.persist_cb(snapshot)
