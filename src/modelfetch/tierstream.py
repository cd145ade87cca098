"""Moving a file through the shared tier in chunks, while it downloads.

Layout beside the lease, under ``<prefix>/<cache key>/``:

    chunks/<run>/<i>   chunk i (``chunk_size`` bytes, the last one shorter), uploaded by one
                       leader's run; its SHA-256 is listed in the lease and the manifest
    manifest.json      the finished file: size, SHA-256, chunk size and the chunk list

The leader (``ChunkLedger`` + ``Publisher``) cuts the bytes its download hashes in file
order into chunks and uploads each one as soon as it is complete, reading it back from its
part file and checking it against the hash of the in-order pass. Because the chunk hashes
come from the same pass that produces the file's SHA-256, a finished chunk list always
describes exactly the bytes that were verified. Followers (``PartFiller``) download listed
chunks into their own part file, check each against its listed SHA-256, hash the file in
order and check the whole file against the expected SHA-256 before anything is promoted.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache.part import load_part_state, part_paths, save_part_state
from .cancel import CancelToken
from .core.resume import PartState
from .errors import CancelledError, DownloadError, IntegrityError
from .fetch.tier import RemoteTier
from .fsutil import lstat_regular, unlink_quiet
from .lease import (
    MAX_DOC_BYTES,
    ChunkRef,
    Held,
    Lease,
    LeaseStore,
    chunk_count,
    chunk_span,
    decode_tier_doc,
    new_run,
    parse_file_fields,
    release,
    renew,
)
from .progress import ProgressEmitter
from .source import ModelSource

log = logging.getLogger("modelfetch")
MANIFEST_NAME = "manifest.json"
READ_PIECE = 1024 * 1024
FOLLOW_PARALLEL = 4
UPLOADS = 2  # chunk uploads in flight per leader
CHUNK_ATTEMPTS = 3
# An upload that makes no progress for this long is given up (boto3 has its own timeouts;
# this bounds the waiting on top of them).
UPLOAD_STALL = 180.0
MAX_MISMATCHES = 3
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


def chunk_key(tier: RemoteTier, source: ModelSource, run: str, index: int) -> str:
    return f"{tier.entry_key(source)}/chunks/{run}/{index}"


def manifest_key(tier: RemoteTier, source: ModelSource) -> str:
    return f"{tier.entry_key(source)}/{MANIFEST_NAME}"


def pick_chunk_size(wanted: int, size: int | None, max_chunks: int = 1024) -> int:
    """The configured chunk size, grown (to whole MiB) for a file so large that it would
    need more than ``max_chunks`` chunks, so lease and manifest stay small."""
    if size is None:
        return wanted
    least = -(-size // max_chunks)
    if least <= wanted:
        return wanted
    return least + (-least % (1024 * 1024))


@dataclass(frozen=True)
class Manifest:
    size: int
    sha256: str
    chunk_size: int
    chunks: tuple[ChunkRef, ...]
    commit: str | None = None

    def encode(self) -> bytes:
        doc = {
            "modelfetch_manifest": 1,
            "size": self.size,
            "sha256": self.sha256,
            "chunk_size": self.chunk_size,
            "chunks": [[c.run, c.sha256] for c in self.chunks],
            "commit": self.commit,
        }
        return json.dumps(doc, separators=(",", ":")).encode()


def decode_manifest(data: bytes) -> Manifest | None:
    """A manifest read from the tier, or None unless it is complete and well-formed."""
    doc = decode_tier_doc(data, "modelfetch_manifest")
    if doc is None:
        return None
    fields = parse_file_fields(doc)
    if fields is None or fields.size is None or fields.sha256 is None:
        return None
    chunks = tuple(c for c in fields.chunks if c is not None)
    if len(chunks) != chunk_count(fields.size, fields.chunk_size):
        return None  # a manifest describes a whole file, every chunk of it
    commit = doc.get("commit")
    if not (isinstance(commit, str) and _COMMIT.match(commit)):
        commit = None
    return Manifest(fields.size, fields.sha256, fields.chunk_size, chunks, commit)


def read_manifest(tier: RemoteTier, source: ModelSource) -> tuple[Manifest | None, str] | None:
    """None if absent; (None, etag) if present but unusable."""
    found = tier.read_doc(manifest_key(tier, source), MAX_DOC_BYTES)
    if found is None:
        return None
    return decode_manifest(found[0]), found[1]


def write_manifest(tier: RemoteTier, source: ModelSource, manifest: Manifest) -> None:
    tier.write_doc(manifest_key(tier, source), manifest.encode())


# -- the leader ------------------------------------------------------------------------------
class ChunkLedger:
    """Cuts the bytes a download hashes in file order into chunks and hashes each one.

    Fed by the download's hash tap. A new pass over the file (a retry re-hashes what is kept
    from offset 0) re-checks the chunks already listed; a chunk that comes out different
    drops itself and everything after it. A ``restart`` event (the part was discarded)
    forgets every chunk. The feed never raises: anything unexpected marks the ledger broken
    and the leader falls back to uploading the finished file.
    """

    def __init__(self, chunk_size: int, *, adjustable: bool = False) -> None:
        self.cond = threading.Condition()
        self.chunk_size = chunk_size
        # True: grow chunk_size for a very large file once its size is known (before the
        # first chunk; a taken-over list keeps the size its chunks were cut with).
        self.adjustable = adjustable
        self.shas: list[str] = []
        self.total: int | None = None
        self.pos = 0
        self.broken = False
        self._hasher = hashlib.sha256()
        self._fill = 0

    def feed(self, offset: int, data: memoryview | bytes, total: int | None) -> None:
        with self.cond:
            if self.broken:
                return
            if offset != self.pos:
                if offset != 0:
                    self._break()
                    return
                self._rewind()
            if total is not None:
                self.total = total
            if self.adjustable:
                self.adjustable = False
                self.chunk_size = pick_chunk_size(self.chunk_size, total)
            view = memoryview(data)
            while len(view):
                take = min(len(view), self.chunk_size - self._fill)
                self._hasher.update(view[:take])
                self._fill += take
                self.pos += take
                view = view[take:]
                if self._fill == self.chunk_size:
                    self._close()
            if self._fill and self.total is not None and self.pos >= self.total:
                self._close()
            self.cond.notify_all()

    def restart(self) -> None:
        with self.cond:
            self.shas.clear()
            self._rewind()
            self.cond.notify_all()

    def finish(self, total: int) -> bool:
        """The download is complete at ``total`` bytes: True if every chunk is accounted for."""
        with self.cond:
            if not self.broken and self.pos == total:
                if self._fill:
                    self._close()
                self.total = total
                del self.shas[chunk_count(total, self.chunk_size) :]
            else:
                self._break()
            self.cond.notify_all()
            return not self.broken and len(self.shas) == chunk_count(total, self.chunk_size)

    def _rewind(self) -> None:
        self.pos = 0
        self._fill = 0
        self._hasher = hashlib.sha256()

    def _break(self) -> None:
        self.broken = True
        self.cond.notify_all()

    def _close(self) -> None:
        index = (self.pos - 1) // self.chunk_size
        sha = self._hasher.hexdigest()
        self._hasher = hashlib.sha256()
        self._fill = 0
        if index < len(self.shas):
            if self.shas[index] != sha:
                del self.shas[index:]
                self.shas.append(sha)
        elif index == len(self.shas):
            self.shas.append(sha)
        else:
            self._break()


class LeaseKeeper:
    """Heartbeats a held lease and publishes progress; notices when the lease is lost."""

    def __init__(
        self,
        store: LeaseStore,
        held: Held,
        progress: Callable[[], int],
        interval: float,
    ) -> None:
        self.store = store
        self.held = held
        self.progress = progress
        self.interval = interval
        self.lost = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._last_ok = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="modelfetch-lease", daemon=True)

    @property
    def lease(self) -> Lease:
        return self.held.lease

    def start(self) -> None:
        self._thread.start()

    def update(self, **changes: Any) -> bool:
        """Write the lease now (with ``changes``); False once it is no longer ours."""
        with self._lock:
            if self.lost:
                return False
            lease = self.held.lease.next_beat(time.time(), done=self.progress(), **changes)
            try:
                held = renew(self.store, self.held, lease)
            except Exception:  # the tier hiccuped; the lease lives on until its ttl
                if time.monotonic() - self._last_ok > self.held.lease.ttl:
                    self.lost = True
                return False
            if held is None:
                self.lost = True
                return False
            self.held = held
            self._last_ok = time.monotonic()
            return True

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.update()
            if self.lost:
                return

    def close(self) -> None:
        """Stop heartbeating and remove the lease if it is still ours."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=120)
        with self._lock:
            if self.lost:
                return
            self.lost = True
            try:
                release(self.store, self.held)
            except Exception as exc:  # it expires on its own after its ttl
                log.debug("could not remove the lease: %r", exc)


class Publisher:
    """Uploads the leader's chunks as soon as they are on disk and keeps the lease's chunk
    list current.

    A chunk goes up once the download's in-order pass has hashed it (the ledger), or
    earlier, as soon as the part's checkpoint shows its bytes on disk: a parallel download
    fills the file in several places at once, and followers should not wait for its first
    segment to finish. Such an early chunk is a claim: when the in-order pass gets there
    and hashes it differently, it is dropped and uploaded again under a new run id. Every
    chunk's SHA-256 is computed from the very bytes uploaded, and the manifest lists only
    chunks the in-order pass confirmed.
    """

    def __init__(
        self,
        tier: RemoteTier,
        source: ModelSource,
        part: Path,
        ledger: ChunkLedger,
        keeper: LeaseKeeper,
        inherited: Sequence[ChunkRef | None] = (),
    ) -> None:
        self.tier = tier
        self.source = source
        self.part = part
        self.state_path = part_paths(part.parent, source.file_name)[1]
        self.ledger = ledger
        self.keeper = keeper
        self.refs: dict[int, ChunkRef] = {i: r for i, r in enumerate(inherited) if r}
        self.run = new_run()
        self.error: str | None = None
        self.described = False
        self.seen_bytes = 0  # bytes the part's checkpoint says are on disk
        self._inflight: dict[concurrent.futures.Future[str | None], tuple[str, int]] = {}
        self._stop = threading.Event()
        self._idle = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="modelfetch-publish", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def listed(self) -> tuple[ChunkRef | None, ...]:
        """The chunk list for the lease (call with the ledger's lock held)."""
        top = max(self.refs, default=-1) + 1
        return tuple(self.refs.get(i) for i in range(top))

    def _reconcile(self) -> None:
        """Drop published chunks the in-order pass hashed differently (ledger lock held)."""
        shas = self.ledger.shas
        wrong = [i for i, ref in self.refs.items() if i < len(shas) and ref.sha256 != shas[i]]
        for i in wrong:
            del self.refs[i]
        if wrong:
            self.run = new_run()  # never overwrite a chunk a follower may be reading

    def _candidates(self, total: int) -> list[tuple[int, str | None]]:
        """Chunks to upload, lowest first: hashed in order (with the SHA-256 they must
        have), and those the checkpoint shows on disk ahead of the in-order pass."""
        ahead = self._on_disk(total)
        busy = {index for _, index in self._inflight.values()}
        with self.ledger.cond:
            self._reconcile()
            shas = list(self.ledger.shas)
            have = set(self.refs) | busy
        jobs: list[tuple[int, str | None]] = [
            (i, sha) for i, sha in enumerate(shas) if i not in have
        ]
        jobs += [(i, None) for i in ahead if i >= len(shas) and i not in have]
        return sorted(jobs, key=lambda job: job[0])

    def _on_disk(self, total: int) -> list[int]:
        """Chunks lying wholly in ranges the part's checkpoint records as written."""
        state = load_part_state(self.state_path, self.source.cache_key)
        if state is None or state.total != total:
            return []
        size = self.ledger.chunk_size
        found: list[int] = []
        seen = 0
        for start, _end, pos in state.segments:
            seen += pos - start
            index = -(-start // size)
            while index * size < pos:
                offset, length = chunk_span(index, total, size)
                if length == 0 or offset + length > pos:
                    break
                found.append(index)
                index += 1
        self.seen_bytes = seen
        return found

    def _upload(self, run: str, index: int, expect: str | None, total: int) -> str | None:
        """Upload one chunk read back from the part; its SHA-256, or None if the part does
        not hold what the in-order pass hashed there (it changed in between)."""
        offset, length = chunk_span(index, total, self.ledger.chunk_size)
        try:
            data = _read_exact(self.part, offset, length)
        except OSError:
            return None
        sha = hashlib.sha256(data).hexdigest()
        if len(data) != length or (expect is not None and sha != expect):
            return None
        self.tier.put_chunk(chunk_key(self.tier, self.source, run, index), data, sha)
        return sha

    def _loop(self) -> None:
        with concurrent.futures.ThreadPoolExecutor(UPLOADS, "modelfetch-upload") as pool:
            try:
                self._dispatch(pool)
            except Exception as exc:  # the leader's own download never depends on this
                self.error = f"publishing failed ({type(exc).__name__})"
            finally:
                for future in self._inflight:
                    future.cancel()
                self._notify()

    def _dispatch(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        mismatches = 0
        while not self._stop.is_set() and self.error is None:
            if self.ledger.broken:
                self.error = "the download's in-order pass went out of step"
                return
            total = self.ledger.total
            if total is not None:
                if not self.described:
                    self._describe(total)
                room = UPLOADS - len(self._inflight)
                for index, sha in self._candidates(total)[: max(0, room)]:
                    future = pool.submit(self._upload, self.run, index, sha, total)
                    self._inflight[future] = (self.run, index)
            if not self._inflight:
                with self.ledger.cond:
                    self.ledger.cond.wait(0.25)
                continue
            finished, _ = concurrent.futures.wait(
                list(self._inflight), timeout=0.25, return_when="FIRST_COMPLETED"
            )
            published = False
            for future in finished:
                run, index = self._inflight.pop(future)
                exc = future.exception()
                if exc is not None:
                    self.error = f"chunk upload failed ({type(exc).__name__})"
                    return
                sha = future.result()
                if sha is None:
                    mismatches += 1  # the part changed under us; the ledger will catch up
                    if mismatches >= MAX_MISMATCHES:
                        self.error = "the part file changed while it was being published"
                        return
                    continue
                mismatches = 0
                published |= self._record(run, index, sha)
            if published:
                with self.ledger.cond:
                    listed = self.listed()
                self.keeper.update(chunks=listed)
            self._notify()

    def _record(self, run: str, index: int, sha: str) -> bool:
        with self.ledger.cond:
            shas = self.ledger.shas
            if run != self.run or (index < len(shas) and shas[index] != sha):
                return False
            self.refs[index] = ChunkRef(run, sha)
            return True

    def _describe(self, total: int) -> None:
        """Put what a successor needs into the lease: size, validator, expected hash."""
        self.described = True
        state = load_part_state(self.state_path, self.source.cache_key)
        changes: dict[str, Any] = {"size": total, "chunk_size": self.ledger.chunk_size}
        if state is not None:
            changes.update(etag=state.etag, last_modified=state.last_modified)
            if state.sha256:
                changes["sha256"] = state.sha256
        self.keeper.update(**changes)

    def _notify(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def _confirmed(self, want: int) -> tuple[ChunkRef, ...] | None:
        """Every chunk published and confirmed by the in-order pass (ledger lock held)."""
        self._reconcile()
        if len(self.ledger.shas) != want or any(i not in self.refs for i in range(want)):
            return None
        return tuple(self.refs[i] for i in range(want))

    def drain(self, total: int) -> tuple[ChunkRef, ...] | None:
        """Wait until every chunk of the finished file is published; None if that failed."""
        want = chunk_count(total, self.ledger.chunk_size)
        seen, last = -1, time.monotonic()
        while True:
            with self.ledger.cond:
                refs = self._confirmed(want)
                count = len(self.refs)
            if refs is not None and self.error is None:
                return refs
            if self.error is not None or not self._thread.is_alive():
                return None
            if count != seen:
                seen, last = count, time.monotonic()
            elif time.monotonic() - last > UPLOAD_STALL:
                self.error = "chunk uploads made no progress"
                return None
            with self._idle:
                self._idle.wait(0.25)

    def stop(self, wait: float = UPLOAD_STALL) -> None:
        """Stop after the uploads in flight (waiting at most ``wait`` seconds for them)."""
        self._stop.set()
        with self.ledger.cond:
            self.ledger.cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout=wait)


def _read_exact(path: Path, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        pieces = []
        while length > 0:
            piece = os.pread(fd, min(length, 16 * READ_PIECE), offset)
            if not piece:
                break
            pieces.append(piece)
            offset += len(piece)
            length -= len(piece)
        return b"".join(pieces)
    finally:
        os.close(fd)


def upload_file(
    tier: RemoteTier,
    source: ModelSource,
    path: Path,
    sha256: str,
    size: int,
    chunk_size: int,
    commit: str | None = None,
    have: Mapping[int, ChunkRef] | None = None,
) -> Manifest:
    """Publish a finished, verified file as chunks + manifest (``have``: chunks already in
    the tier, re-checked against the file). Raises IntegrityError if the file is not the
    one described."""
    run = new_run()
    refs: list[ChunkRef] = []
    whole = hashlib.sha256()
    for index in range(chunk_count(size, chunk_size)):
        offset, length = chunk_span(index, size, chunk_size)
        data = _read_exact(path, offset, length)
        whole.update(data)
        sha = hashlib.sha256(data).hexdigest()
        if len(data) != length:
            break
        known = (have or {}).get(index)
        if known is not None and known.sha256 == sha:
            refs.append(known)
            continue
        tier.put_chunk(chunk_key(tier, source, run, index), data, sha)
        refs.append(ChunkRef(run, sha))
    if whole.hexdigest() != sha256:
        raise IntegrityError(f"{path.name} changed while it was being copied to the tier")
    manifest = Manifest(size, sha256, chunk_size, tuple(refs), commit)
    write_manifest(tier, source, manifest)
    return manifest


# -- followers -------------------------------------------------------------------------------
class ChunkMissing(Exception):
    """A listed chunk is not (yet) in the tier."""


class PartFiller:
    """A follower's part file: verified chunks from the tier, hashed in file order.

    Chunks are written at their offsets as they arrive (several at a time); the file's
    SHA-256 advances over the contiguous prefix, reading it back from the page cache.
    """

    def __init__(
        self,
        tier: RemoteTier,
        source: ModelSource,
        directory: Path,
        size: int,
        chunk_size: int,
        emitter: ProgressEmitter,
        cancel: CancelToken | None,
    ) -> None:
        self.tier = tier
        self.source = source
        self.size = size
        self.chunk_size = chunk_size
        self.emit = emitter
        self.cancel = cancel
        self.part, self.state_path = part_paths(directory, source.file_name)
        self.count = chunk_count(size, chunk_size)
        self.held: list[str | None] = [None] * self.count
        self.hashed = 0  # chunks fed to the in-order hasher
        self._hasher = hashlib.sha256()
        self._lock = threading.Lock()
        unlink_quiet(self.state_path)  # the part is rewritten: no checkpoint may claim it
        if lstat_regular(self.part) is None:
            unlink_quiet(self.part)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            self.fd: int | None = os.open(self.part, flags, 0o644)
            os.ftruncate(self.fd, 0)
            os.ftruncate(self.fd, size)
        except OSError as exc:
            raise DownloadError(f"cannot write {self.part}: {exc.strerror}") from None
        self.emit.emit("start", 0, size)

    @property
    def held_bytes(self) -> int:
        return sum(
            chunk_span(i, self.size, self.chunk_size)[1]
            for i, sha in enumerate(self.held)
            if sha is not None
        )

    def holds(self, index: int, ref: ChunkRef | None) -> bool:
        return ref is not None and index < self.count and self.held[index] == ref.sha256

    def sync(self, refs: Sequence[ChunkRef | None]) -> bool:
        """Fetch every listed chunk not yet held. True if anything new arrived."""
        self._forget_changed(refs)
        todo = [
            (i, ref)
            for i, ref in enumerate(refs[: self.count])
            if ref is not None and self.held[i] is None
        ]
        if not todo:
            return False
        workers = min(FOLLOW_PARALLEL, len(todo))
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(self._fetch_chunk, i, ref): i for i, ref in todo}
            errors: list[BaseException] = []
            for future in concurrent.futures.as_completed(futures):
                if future.cancelled():  # after a hard error elsewhere: not needed any more
                    continue
                exc = future.exception()
                if exc is not None:
                    errors.append(exc)
                    if not isinstance(exc, ChunkMissing):
                        for other in futures:
                            other.cancel()
        self._advance_hash()
        hard = [e for e in errors if not isinstance(e, ChunkMissing)]
        if hard:
            raise hard[0]
        return len(errors) < len(todo)

    def _forget_changed(self, refs: Sequence[ChunkRef | None]) -> None:
        """The leader re-published a chunk with other bytes: what we hold there is stale."""
        for i, ref in enumerate(refs[: self.count]):
            if ref is not None and self.held[i] is not None and self.held[i] != ref.sha256:
                self.held[i] = None
                if self.hashed > i:  # the file's hash went past it: hash again from 0
                    self.hashed = 0
                    self._hasher = hashlib.sha256()

    def _fetch_chunk(self, index: int, ref: ChunkRef) -> None:
        offset, length = chunk_span(index, self.size, self.chunk_size)
        key = chunk_key(self.tier, self.source, ref.run, index)
        last: BaseException | None = None
        for _ in range(CHUNK_ATTEMPTS):
            if self.cancel is not None:
                self.cancel.check()
            with self._lock:
                # The chunk at the hash frontier also feeds the file's hash as it arrives
                # (a copy, adopted only if the chunk checks out): no read-back for it.
                # Not when a watcher (the mirror) must see the hashed bytes in file order.
                at_frontier = index == self.hashed and self.emit.watcher is None
                ahead = self._hasher.copy() if at_frontier else None
            try:
                body, announced = self.tier.open_object(key)
            except KeyError:
                raise ChunkMissing(key) from None
            try:
                if announced is not None and announced != length:
                    raise IntegrityError(f"tier chunk {index} has {announced} bytes, not {length}")
                digest = self._copy(body, offset, length, ahead)
            except CancelledError:
                raise
            except Exception as exc:  # short, broken or unreadable: try again
                last = exc
                continue
            finally:
                body.close()
            if digest == ref.sha256:
                with self._lock:
                    self.held[index] = digest
                    if ahead is not None and self.hashed == index:
                        self._hasher = ahead
                        self.hashed += 1
                return
            last = IntegrityError(f"tier chunk {index} does not match its SHA-256")
        if isinstance(last, IntegrityError):
            raise last
        raise DownloadError(f"could not read chunk {index} from the tier ({last!r:.200})")

    def _copy(self, body: Any, offset: int, length: int, ahead: Any) -> str:
        assert self.fd is not None
        hasher = hashlib.sha256()
        got = 0
        while got < length:
            if self.cancel is not None:
                self.cancel.check()
            piece = body.read(min(READ_PIECE, length - got))
            if not piece:
                break
            hasher.update(piece)
            if ahead is not None:
                ahead.update(piece)
            view, at = memoryview(piece), offset + got
            while len(view):
                written = os.pwrite(self.fd, view, at)
                view, at = view[written:], at + written
            got += len(piece)
        if got != length or body.read(1):
            raise IntegrityError(f"tier chunk at {offset} is not {length} bytes long")
        return hasher.hexdigest()

    def _advance_hash(self) -> None:
        """Feed the file's hash with the chunks that arrived ahead of it, in order, read
        back from the page cache (what is read is what the final check covers)."""
        assert self.fd is not None
        while self.hashed < self.count and self.held[self.hashed] is not None:
            offset, length = chunk_span(self.hashed, self.size, self.chunk_size)
            while length > 0:
                piece = os.pread(self.fd, min(length, 4 * READ_PIECE), offset)
                if not piece:
                    raise DownloadError("partial file is shorter than what was written")
                self._hasher.update(piece)
                self.emit.hashed(offset, piece, self.size)
                offset += len(piece)
                length -= len(piece)
            self.hashed += 1
        self.emit.bytes(self.held_bytes, self.size)

    def finish(self, expected: Sequence[str]) -> tuple[str, int]:
        """All chunks are in: the file's SHA-256, checked against every ``expected`` hash."""
        assert self.fd is not None
        if self.hashed != self.count:
            raise DownloadError("the tier copy is incomplete")
        digest = self._hasher.hexdigest()
        for want in expected:
            if want != digest:
                raise IntegrityError(f"the tier's copy has SHA-256 {digest}, expected {want}")
        os.fsync(self.fd)
        self.emit.bytes(self.size, self.size, force=True)
        self.close()
        return digest, self.size

    def checkpoint(self, lease: Lease | None, expected: str | None) -> None:
        """Describe the chunks we hold in the downloader's part sidecar, so a download from
        the origin (after a take-over) fetches only the gaps instead of starting over."""
        if self.fd is None:
            return
        os.fdatasync(self.fd)
        state = PartState(
            self.source.cache_key,
            lease.etag if lease else None,
            lease.last_modified if lease else None,
            self.size,
            expected,
            self._segments(),
        )
        save_part_state(self.state_path, state)

    def _segments(self) -> tuple[tuple[int, int, int], ...]:
        """[start, end, pos] tiling the file: each a run of held chunks, then a gap."""
        segments = []
        i = 0
        while i < self.count:
            start = chunk_span(i, self.size, self.chunk_size)[0]
            while i < self.count and self.held[i] is not None:
                i += 1
            pos = min(self.size, i * self.chunk_size)
            while i < self.count and self.held[i] is None:
                i += 1
            segments.append((start, min(self.size, i * self.chunk_size), pos))
        return tuple(segments)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


__all__ = [
    "MANIFEST_NAME",
    "ChunkLedger",
    "LeaseKeeper",
    "Manifest",
    "PartFiller",
    "Publisher",
    "decode_manifest",
    "pick_chunk_size",
    "read_manifest",
    "upload_file",
]
