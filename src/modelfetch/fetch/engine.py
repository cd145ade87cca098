"""Moving bytes from HTTP responses into a part file: one stream or several, hashed in order.

The part file is covered by *segments* that tile ``[0, total)``; each has a position up to
which its bytes are on disk. Workers (one thread and one connection at a time each)
``pwrite`` at their segment's position. Several workers fetch a large file in pieces,
lowest first (core/segments.py), so they all work close to the hash frontier; a worker
sends the request for its next piece shortly before its current piece ends, so a far
origin's round trip is not paid between pieces. A worker with no piece left splits the
largest remaining segment in two, or takes over a segment whose connection stalled, so
slow tails do not hold the download back.

SHA-256 must be computed in file order. A single hasher thread does it: a chunk that lands
exactly at the hash frontier is handed over in memory (a single stream is never read back),
and data that arrived out of order is read back with ``preadv`` once the frontier reaches it
(from the page cache, moments after it was written: pieces keep it close). Buffers come
from a fixed pool, so memory stays bounded whatever the file size.

Every second, and whenever the transfer stops, the segment positions are saved to the part
sidecar after an ``fdatasync``, so a killed process resumes from what is really on disk. A
segment's position only ever counts bytes inside its current bounds, so segments never
overlap, whatever a take-over does meanwhile.

Stopping is prompt: a cancel, a failed worker, a transfer slower than the low-speed limit or
a KeyboardInterrupt in the coordinator shuts every live socket down (a thread blocked in
``recv()`` wakes at once), then the workers are joined and positions are saved.
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

from ..budget import ConnectionBudget
from ..cancel import CancelToken
from ..core.retry import RetryableError
from ..core.segments import Segment, SegmentTable, contiguous_frontier, piece_size
from ..errors import CancelledError, DownloadError, ModelFetchError, storage_error
from ..fsutil import start_writeback
from ..http_client import Response

CHUNK = 1024 * 1024  # read size for local copies and the default for tests
# Measured on loopback (bench/run.py): one stream wants large reads to keep Python's
# per-chunk overhead small; many streams share the CPU, and smaller buffers keep RSS low.
SINGLE_STREAM_CHUNK = 4 * 1024 * 1024
PARALLEL_CHUNK = 2 * 1024 * 1024
SPARE_BUFFERS = 4
HASH_READ = 1024 * 1024  # read-back buffer of the hasher
HASH_CLAIM = 8 * 1024 * 1024  # read back at most this much per turn of its loop
STALL_SECONDS = 5.0  # the default of EnsureOptions.stall_seconds
PERSIST_SECONDS = 1.0
# One stream's speed is judged every RAMP_TICK from RAMP_FIRST on (bench/run.py: on loopback
# a 60 MB/s CDN stream and a 1+ GB/s one are told apart from 25 ms on); one that is still
# fast at RAMP_LAST stays alone. A budget that granted too few is asked every RAMP_RETRY.
RAMP_FIRST = 0.05
RAMP_LAST = 0.25
RAMP_TICK = 0.025
RAMP_RETRY = 0.25
FLUSH_SECONDS = 1.0  # a direct-I/O buffer is written out at least this often
DIRECT_ALIGN = 4096
WRITEBACK_BYTES = 16 * 1024 * 1024

TRANSPORT_ERRORS = (Urllib3HTTPError, http.client.HTTPException, ConnectionError, TimeoutError)


class RangeUnsupported(Exception):
    """A segment request was not answered with the exact range: use one stream instead."""


class TransferRetry(RetryableError):
    def __init__(self, message: str, progressed: bool) -> None:
        super().__init__(message, progressed=progressed)


class LowSpeedError(TransferRetry):
    """Fewer bytes arrived than the low-speed limit allows: retried, and it always uses up a
    retry (a server that drips a byte now and then must not hold a download forever)."""

    def __init__(self, limit: int, seconds: float) -> None:
        super().__init__(
            f"transfer slower than {limit} bytes/s for {seconds:g} s "
            "(low_speed_limit/low_speed_time)",
            progressed=False,
        )


@dataclass(frozen=True)
class LowSpeed:
    """curl's --speed-limit/--speed-time: fail when fewer than ``limit`` bytes/s arrive
    over ``seconds``. A limit of 0 turns the check off."""

    limit: int = 1024
    seconds: float = 30.0


class _SpeedWindow:
    """Bytes received over the last ``seconds`` (samples are dropped as they age)."""

    def __init__(self, rule: LowSpeed) -> None:
        self.rule = rule
        self.samples: deque[tuple[float, int]] = deque()

    def too_slow(self, now: float, received: int) -> bool:
        if self.rule.limit <= 0:
            return False
        self.samples.append((now, received))
        # Keep the newest sample that is at least `seconds` old as the window's start.
        while len(self.samples) > 1 and now - self.samples[1][0] >= self.rule.seconds:
            self.samples.popleft()
        then, before = self.samples[0]
        if now - then < self.rule.seconds:
            return False
        return (received - before) < self.rule.limit * (now - then)


def pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data:
        n = os.pwrite(fd, data, offset)
        data = data[n:]
        offset += n


class _Ahead:
    """The request for a worker's next piece, sent by a helper thread shortly before the
    current piece ends, so the answer is there when the worker needs it: a far origin's
    round trip is not paid between pieces (HTTP/1.1 pipelining, on a fresh connection)."""

    def __init__(self, seg: Segment, open_segment: Callable[[], Response]) -> None:
        self.seg = seg
        self._open = open_segment
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._resp: Response | None = None
        self._error: BaseException | None = None
        self._abandoned = False
        threading.Thread(target=self._run, name="modelfetch-ahead", daemon=True).start()

    def _run(self) -> None:
        resp: Response | None = None
        error: BaseException | None = None
        try:
            resp = self._open()
        except BaseException as exc:  # handed to the worker, which raises it as its own
            error = exc
        with self._lock:
            abandoned = self._abandoned
            self._resp, self._error = resp, error
        if abandoned and resp is not None:
            resp.close()
        self._ready.set()

    def take(self, stopped: Callable[[], bool]) -> Response | None:
        """The answer (or the request's exception, raised); None if the transfer stopped
        meanwhile. Waits only while the request is under way, bounded by its timeouts."""
        while not self._ready.wait(0.25):
            if stopped():
                self.abandon()
                return None
        if self._error is not None:
            raise self._error
        return self._resp

    def abandon(self) -> None:
        with self._lock:
            self._abandoned = True
            resp, self._resp = self._resp, None
        if resp is not None:
            resp.close()


@dataclass
class _Lane:
    """A worker's request sent ahead for its next piece, if any."""

    ahead: _Ahead | None = None
    asked: bool = False  # for the current piece


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
        open_segment: Callable[[int, int, CancelToken], Response],
        persist: Callable[[list[list[int | None]]], None],
        on_bytes: Callable[[int, int | None], None],
        cancel: CancelToken | None,
        connections: int,
        ramp_below: float | None = None,
        also_hash: hashlib._Hash | None = None,
        low_speed: LowSpeed | None = None,
        budget: ConnectionBudget | None = None,
        on_hashed: Callable[[int, memoryview | bytes, int | None], None] | None = None,
        stall_seconds: float = STALL_SECONDS,
    ) -> None:
        """``open_segment(start, end, stop)`` requests bytes [start, end) and checks the
        answer against exactly that range (the segment's end may move while it is in
        flight); ``stop`` fires when the transfer stops, to interrupt the wait."""
        self.fd = fd
        self.direct_fd = direct_fd
        self.connections = max(1, connections)
        self.table = SegmentTable(segments, piece_size(total, self.connections))
        self.segments = segments  # the table's list, shared
        self.total = total
        self.open_segment = open_segment
        self.persist_cb = persist
        self.on_bytes = on_bytes
        self.cancel = cancel
        # Connections beyond the first are granted by a budget shared with other downloads.
        self.budget = budget
        # A connection silent this long has its remainder taken over by an idle worker.
        self.stall_seconds = stall_seconds
        # None: all connections from the start. A rate (bytes/s): start with one stream and
        # add the others only if it delivers less than that (judged from RAMP_FIRST on).
        self.ramp_below = ramp_below if self.connections > 1 else None
        self.cond = threading.Condition()
        self.claim = 0  # end of the bytes hashed or queued for hashing
        self.hash_queue: deque[tuple[memoryview, int]] = deque()
        self.hasher = hashlib.sha256()
        self.also_hash = also_hash  # a second digest fed the same bytes (a git blob id)
        self.on_hashed = on_hashed  # sees the bytes in file order, as they are hashed
        self.hashed = 0
        self.hash_done = False
        self.abort = False  # workers stop: an error, a cancel, or everything is on disk
        self.complete = False  # every segment is on disk; later worker errors don't count
        self.error: BaseException | None = None
        self.stop = CancelToken()  # fired with abort: interrupts requests waiting for headers
        self.low_speed = low_speed or LowSpeed(0)
        # LIFO: the buffer just handed back is reused first, so the pages actually touched
        # (the RSS) stay at what the pipeline needs rather than the whole pool.
        self.pool: queue.LifoQueue[memoryview] = queue.LifoQueue()
        self._maps: list[mmap.mmap] = []
        self.initial_done = sum(s.pos - s.start for s in segments)
        self.running = 0
        self.live: dict[int, Response] = {}  # worker thread id -> its open response
        # Sending a piece's request before the previous piece ends opens one more connection
        # for a moment: not for a batch whose connections a budget counts.
        self.send_ahead = budget is None and self.connections > 1
        self.header_wait = 0.0  # seconds from a request to its answer's headers (smoothed)

    # -- bookkeeping (call with self.cond held) --------------------------------------------
    def _next_work(self) -> Segment | None:
        return self.table.next_work(time.monotonic(), self.stall_seconds)

    def _ramp_up(self) -> int:
        """Leave the running segment one piece and the rest to new workers, as many as the
        shared budget grants. Returns how many workers to start."""
        wanted = self.table.ramp_room(self.connections - self.running)
        if wanted < 1:
            return 0
        granted = self.budget.try_acquire(wanted) if self.budget else wanted
        if granted > 0 and self.table.ramp_cut():
            return granted
        if self.budget is not None and granted > 0:
            self.budget.release(granted)
        return 0

    def _open_timed(self, start: int, end: int) -> Response:
        resp = self.open_segment(start, end, self.stop)
        self._waited(resp.waited)
        return resp

    def _waited(self, seconds: float) -> None:
        """Learn how long the origin takes to answer a request (smoothed)."""
        with self.cond:
            old = self.header_wait
            self.header_wait = seconds if not old else 0.7 * old + 0.3 * seconds

    def _send_ahead(self) -> _Ahead | None:
        with self.cond:
            if self.abort:
                return None
            seg = self.table.next_piece(time.monotonic())
            if seg is None:
                return None
            start, end = seg.pos, seg.end
        assert end is not None
        return _Ahead(seg, lambda: self._open_timed(start, end))

    def _work_or_exit(self) -> Segment | None:
        """Next piece of work; while other segments are still running, linger so a stall
        that starts later can still be rescued. None: the transfer needs no more workers."""
        while True:
            seg = self._next_work()
            if seg is not None or self.abort or all(s.done for s in self.segments):
                return seg
            self.cond.wait(0.25)

    # -- threads ---------------------------------------------------------------------------
    def _pump(self, resp: Response, seg: Segment, lane: _Lane) -> None:
        """Move one response's body into the segment.

        Buffered mode writes every read. Direct mode (O_DIRECT) fills a page-aligned buffer
        and writes whole aligned blocks, carrying an unaligned remainder (< 4 KiB) into the
        next buffer, so bytes skip the page cache and need no writeback at the end. Either
        way a segment's position only moves after its bytes are written.

        When the rest of the piece will take about as long as a request takes to be
        answered, the next piece's request is sent (``lane.ahead``).
        """
        with self.cond:
            # Only bytes at the hash frontier skip the page cache: they are hashed from the
            # buffer. Bytes that arrive ahead of it are read back for hashing, cheaply,
            # from the page cache.
            at_frontier = contiguous_frontier(self.segments) >= seg.pos
        direct = self.direct_fd is not None and seg.pos % DIRECT_ALIGN == 0 and at_frontier
        buf = self._buffer()
        fill = got = 0
        since = started = time.monotonic()
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
                got += n
                now = time.monotonic()
                with self.cond:
                    seg.last_progress = now  # bytes are arriving: not stalled
                    seg.pending = fill
                if limit is not None and not lane.asked:
                    self._maybe_send_ahead(lane, got, limit - fill, now - started)
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

    def _maybe_send_ahead(self, lane: _Lane, got: int, left: int, elapsed: float) -> None:
        """Send the next piece's request if the ``left`` bytes of this one will arrive
        within about one request-to-headers wait (judged once half the piece is in, so a
        first burst out of the socket buffer does not count as the connection's speed)."""
        if not self.send_ahead or got < left or elapsed <= 0:
            return
        lead = 1.2 * self.header_wait + 0.002
        if left <= got / elapsed * lead:
            lane.asked = True
            lane.ahead = self._send_ahead()

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
        carry = bytes(buf[size:allowed])  # < 4 KiB: the unaligned tail of a direct write
        with self.cond:
            # A take-over or split may have moved the end while we wrote: count only the
            # bytes still inside the segment (the new owner fetches the others), so
            # segments never overlap and the hash frontier always reaches the end.
            advance = 0
            if seg.pos == offset:
                advance = size if seg.end is None else max(0, min(size, seg.end - offset))
                seg.pos += advance
            handed = advance > 0 and offset == self.claim
            if handed:
                self.hash_queue.append((buf, advance))
                self.claim += advance
            self.cond.notify_all()
        nxt = self._buffer() if handed else buf
        if nxt is None:
            return None, 0
        nxt[: len(carry)] = carry
        return nxt, len(carry)

    def _buffer(self) -> memoryview | None:
        while True:
            try:
                return self.pool.get(timeout=0.25)
            except queue.Empty:
                with self.cond:
                    if self.abort:
                        return None

    def _worker(self, seg: Segment | None, resp: Response | None, extra: bool = False) -> None:
        me = threading.get_ident()
        lane = _Lane()
        try:
            if seg is None:
                with self.cond:
                    seg = self._next_work()
            while seg is not None:
                try:
                    if resp is None:
                        resp = self._answer(seg, lane)
                    if resp is not None:
                        with self.cond:
                            if self.abort:
                                return
                            self.live[me] = resp
                        self._pump(resp, seg, lane)
                except TRANSPORT_ERRORS as exc:
                    with self.cond:
                        # A connection shut down because the transfer stopped, or a
                        # stalled one whose work moved on, is no error of its own.
                        quiet = self.abort or seg.done
                    if not quiet:
                        raise TransferRetry(
                            f"connection lost ({type(exc).__name__})", progressed=True
                        ) from None
                finally:
                    with self.cond:
                        self.live.pop(me, None)
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
                    seg = lane.ahead.seg if lane.ahead is not None else self._work_or_exit()
        except BaseException as exc:
            if isinstance(exc, OSError) and not isinstance(exc, TRANSPORT_ERRORS):
                exc = storage_error(exc, "the partial file")
            self._stop(exc)
        finally:
            if lane.ahead is not None:
                lane.ahead.abandon()
            if resp is not None:
                resp.close()
            if extra and self.budget is not None:
                self.budget.release()  # to whichever download asks next
            with self.cond:
                self.running -= 1
                self.cond.notify_all()

    def _answer(self, seg: Segment, lane: _Lane) -> Response | None:
        """The response for ``seg``: the one sent ahead for it, or a new request."""
        ahead, lane.ahead, lane.asked = lane.ahead, None, False
        if ahead is not None and ahead.seg is seg:
            return ahead.take(lambda: self.abort)
        if ahead is not None:
            ahead.abandon()
        with self.cond:
            start, end = seg.pos, seg.end
        if end is None or start >= end:
            return None
        return self._open_timed(start, end)

    def _hash_loop(self) -> None:
        scratch = memoryview(bytearray(HASH_READ))
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
                            n = min(frontier - start, HASH_CLAIM)
                            self.claim += n
                            break
                        if self.total is not None and self.claim >= self.total:
                            self.hash_done = True
                            self.cond.notify_all()
                            return
                        if self.abort and (self.error is not None or not self.complete):
                            return  # stopped early; a complete transfer is hashed to the end
                        self.cond.wait(0.25)
                if start < 0:
                    self._hash(buf[:n])
                    self.pool.put(buf)
                else:
                    self._hash_from_file(start, n, scratch)
        except BaseException as exc:
            self._stop(exc)

    def _hash_from_file(self, start: int, n: int, scratch: memoryview) -> None:
        """Hash bytes that were written ahead of the frontier, read back from the page
        cache into one reused buffer (no allocation per read)."""
        while n > 0:
            got = os.preadv(self.fd, [scratch[: min(n, len(scratch))]], start)
            if not got:
                raise DownloadError("partial file is shorter than what was written")
            self._hash(scratch[:got])
            start += got
            n -= got

    def _hash(self, data: memoryview | bytes) -> None:
        self.hasher.update(data)
        if self.also_hash is not None:
            self.also_hash.update(data)
        if self.on_hashed is not None:
            self.on_hashed(self.hashed, data, self.total)
        self.hashed += len(data)

    # -- coordinator (the caller's thread) --------------------------------------------------
    def run(self, first: tuple[Segment, Response] | None) -> tuple[str, int]:
        hasher = threading.Thread(target=self._hash_loop, name="modelfetch-hash", daemon=True)
        hasher.start()
        if first is not None:
            self._waited(first[1].waited)
        with self.cond:
            assignments: list[tuple[Segment | None, Response | None]] = []
            if first is not None:
                first[0].active = True
                first[0].last_progress = time.monotonic()
                assignments.append(first)
            ramp = self.ramp_below is not None and first is not None
            start_with = 1 if ramp else self.connections
            if self.budget is not None and start_with > 1:
                start_with = 1 + self.budget.try_acquire(start_with - 1)
            granted = start_with - 1
            if first is not None and start_with > 1:
                self.table.cut(first[0], self.table.piece)  # the first answer serves a piece
            while len(assignments) < start_with:
                seg = self._next_work()
                if seg is None:
                    break
                assignments.append((seg, None))
            self.running = len(assignments)
        if self.budget is not None and granted > len(assignments) - 1:
            self.budget.release(granted - max(0, len(assignments) - 1))  # less work to share
        chunk = SINGLE_STREAM_CHUNK if start_with == 1 else PARALLEL_CHUNK
        self._add_buffers(max(1, len(assignments)) + SPARE_BUFFERS, chunk)
        threads = [
            threading.Thread(target=self._worker, args=(seg, resp, i > 0), daemon=True)
            for i, (seg, resp) in enumerate(assignments)
        ]
        for t in threads:
            t.start()
        unlink = self.cancel.on_cancel(self._cancelled) if self.cancel is not None else None
        interrupt: BaseException | None = None
        try:
            self._coordinate(threads, ramp)
        except BaseException as exc:  # KeyboardInterrupt in the caller's thread, mostly
            interrupt = exc
            self._stop(exc)
        finally:
            if unlink is not None:
                unlink()
            interrupt = self._join(threads) or interrupt
        with self.cond:
            if self.error is None and not all(s.done for s in self.segments):
                self.error = TransferRetry("a segment was left unfinished", progressed=True)
            if self.error is None and self.total is None:
                self.error = DownloadError("internal error: length unknown after the body ended")
        if self.error is not None:
            self._stop(self.error)
        hasher.join()
        try:
            self._persist()
        except ModelFetchError:
            if self.error is None and interrupt is None:
                raise  # otherwise the first error is the one to report
        if interrupt is not None and not isinstance(interrupt, Exception):
            raise interrupt  # KeyboardInterrupt / SystemExit, after the part is saved
        if self.error is not None:
            error = self.error
            if isinstance(error, TransferRetry) and not isinstance(error, LowSpeedError):
                with self.cond:
                    error.progressed = self.table.done_bytes() > self.initial_done
            raise error
        if not self.hash_done or self.total is None:
            raise DownloadError("internal error: transfer ended before the hash caught up")
        self.on_bytes(self.total, self.total)
        return self.hasher.hexdigest(), self.total

    def _coordinate(self, threads: list[threading.Thread], ramp_pending: bool) -> None:
        """Report progress, ramp up, start writeback, checkpoint, watch the speed."""
        last_persist = started = time.monotonic()
        next_ramp = RAMP_FIRST
        speed = _SpeedWindow(self.low_speed)
        while True:
            early = ramp_pending and time.monotonic() - started < RAMP_LAST
            with self.cond:
                self.cond.wait(RAMP_TICK if early else 0.1)
                running, done = self.running, self.table.shown_bytes()
                everything_on_disk = bool(self.segments) and all(s.done for s in self.segments)
            if running and everything_on_disk:
                # Only connections whose work was taken over are left, possibly stuck in
                # recv() or waiting for headers. Wake them up.
                self._complete()
            if self.cancel is not None and self.cancel.cancelled:
                self._cancelled()
            self.on_bytes(done, self.total)
            if running == 0:
                return
            now = time.monotonic()
            if not everything_on_disk and speed.too_slow(now, done):
                self._stop(LowSpeedError(self.low_speed.limit, self.low_speed.seconds))
            elapsed = now - started
            if ramp_pending and elapsed >= next_ramp:
                ramp_pending, next_ramp = self._ramp(threads, done, elapsed)
            self._start_writeback()
            if now - last_persist >= PERSIST_SECONDS:
                try:
                    self._persist()
                except ModelFetchError as exc:  # a full disk: stop the workers too
                    self._stop(exc)
                last_persist = time.monotonic()

    def _ramp(
        self, threads: list[threading.Thread], done: int, elapsed: float
    ) -> tuple[bool, float]:
        """Add connections if the transfer so far is slower than ``ramp_below``. Returns
        whether to look again, and when."""
        assert self.ramp_below is not None
        if (done - self.initial_done) / elapsed >= self.ramp_below:
            return elapsed < RAMP_LAST, elapsed + RAMP_TICK
        threads.extend(self._spawn_more())
        # A shared budget may have granted fewer than wanted: ask again later, when other
        # downloads may have handed some back.
        with self.cond:
            again = self.budget is not None and self.running < self.connections and not self.abort
        return again, elapsed + RAMP_RETRY

    def _join(self, threads: list[threading.Thread]) -> BaseException | None:
        """Wait for every worker (they write into our descriptor, which the caller closes
        next). A second Ctrl-C does not cut this short; the workers are stopping anyway."""
        interrupt: BaseException | None = None
        for t in threads:
            while True:
                try:
                    t.join()
                    break
                except KeyboardInterrupt as exc:
                    interrupt = exc
                    self._stop(exc)
        return interrupt

    def _add_buffers(self, count: int, size: int) -> None:
        for _ in range(count):
            m = mmap.mmap(-1, size)  # anonymous mmaps are page-aligned, as O_DIRECT needs
            self._maps.append(m)
            self.pool.put(memoryview(m))

    def _start_writeback(self) -> None:
        """Get the kernel writing every segment's new bytes, and every finished piece, to
        disk while more arrive, so the final fdatasync has little left (direct-I/O bytes are
        on disk already)."""
        with self.cond:
            ranges = []
            for seg in self.segments:
                if seg.written_back < seg.start:
                    seg.written_back = seg.start
                behind = seg.pos - seg.written_back
                if behind >= WRITEBACK_BYTES or (seg.done and behind > 0):
                    ranges.append((seg.written_back, behind))
                    seg.written_back = seg.pos
            self.table.compact()
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
            threading.Thread(target=self._worker, args=(None, None, True), daemon=True)
            for _ in range(extra)
        ]
        for t in threads:
            t.start()
        return threads

    def _cancelled(self) -> None:
        self._stop(CancelledError("cancelled by the caller; partial data is kept for resume"))

    def _stop(self, error: BaseException) -> None:
        """Stop every worker now: record the first error, wake waiters, shut sockets down."""
        with self.cond:
            if self.error is None and not self.complete:
                self.error = error
            self.abort = True
            live = list(self.live.values())
            self.cond.notify_all()
        self.stop.cancel()
        for resp in live:
            resp.abort()

    def _complete(self) -> None:
        """Every byte is on disk: release the workers still waiting on a connection."""
        with self.cond:
            self.complete = True
        self._stop(DownloadError("internal error: stopped after completion"))

    def _persist(self) -> None:
        with self.cond:
            snapshot = self.table.snapshot()
        try:
            os.fdatasync(self.fd)  # positions are only recorded for bytes that are on disk
        except OSError as exc:
            raise storage_error(exc, "the partial file") from None
        self.persist_cb(snapshot)
