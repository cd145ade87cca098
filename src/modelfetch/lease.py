"""Single flight across machines: a lease object in the shared tier names the one machine
that downloads a file from the origin while the others stream its bytes through the tier.

The lease (``<prefix>/<cache key>/lease.json``) says who holds it, how long it lives without
a heartbeat (``ttl``) and how far the holder got: its origin validator, size, expected
SHA-256 and the chunks it has published so far. The rules here are small functions around
a tiny store interface (read / create-if-absent / replace-if-unchanged / remove), so they
can be checked without sockets; remote.py adapts them to S3.

Object stores differ in what they guarantee. Where ``If-None-Match: *`` and ``If-Match``
are enforced, only one machine's write wins. Some stores accept the headers but let racing
writes all succeed (SeaweedFS 4.16, issue #8800), so every take is confirmed by
reading the lease back after a short settle delay: the last writer wins, and a machine
whose token is not the one stored does not lead. A race the settle delay cannot see (a
writer stalled for longer than the delay between its check and its write) costs one extra
origin download, nothing more: each leader publishes under its own run id, and followers
verify every chunk and the whole file.

Liveness is judged by the follower's own monotonic clock (the lease must change within its
ttl), so clock skew between machines cannot kill a live lease. The holder's wall-clock time
is used only to skip the wait for a lease that is obviously abandoned (older than ttl plus
``MAX_SKEW``).
"""

from __future__ import annotations

import json
import math
import os
import re
import secrets
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

LEASE_NAME = "lease.json"
MIN_TTL = 1.0
MAX_TTL = 600.0
# Machines' clocks may disagree by this much before a lease looks stale by wall time alone.
MAX_SKEW = 30.0
MAX_DOC_BYTES = 1024 * 1024  # a lease or manifest larger than this is not ours
MIN_CHUNK = 64 * 1024
MAX_CHUNK = 1024 * 1024 * 1024
MAX_CHUNKS = 65536
MAX_SIZE = 2**50
_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_RUN = re.compile(r"^[0-9a-f]{16}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_PRINTABLE = re.compile(r"^[\x20-\x7e]{0,200}$")


@dataclass(frozen=True)
class ChunkRef:
    """Chunk ``i`` of a file, uploaded by run ``run`` as ``chunks/<run>/<i>``."""

    run: str
    sha256: str


def chunk_count(size: int, chunk_size: int) -> int:
    return -(-size // chunk_size)


def chunk_span(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index``."""
    start = index * chunk_size
    return start, max(0, min(chunk_size, size - start))


def new_token() -> str:
    return secrets.token_hex(16)


def new_run() -> str:
    return secrets.token_hex(8)


def owner_id() -> str:
    """Who holds a lease, for people reading it: host, pid and a random tag."""
    host = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname())[:64] or "host"
    return f"{host}:{os.getpid()}:{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Lease:
    token: str  # unique per take; the holder recognises its own lease by it
    owner: str
    ttl: float
    chunk_size: int
    beat: int = 0  # bumped on every write, so even an unchanged state looks alive
    wall: float = 0.0  # the holder's time.time() at the last write
    size: int | None = None
    sha256: str | None = None  # expected SHA-256, when the holder knows it
    etag: str | None = None  # the origin's validator, so a successor can resume with Range
    last_modified: str | None = None
    done: int = 0  # bytes the holder has on disk: progress, even inside a chunk
    # Chunks published so far, by index; None where a chunk is not in the tier yet (a
    # parallel download fills the file in several places at once).
    chunks: tuple[ChunkRef | None, ...] = field(default=())

    @property
    def published(self) -> int:
        return sum(c is not None for c in self.chunks)

    def encode(self) -> bytes:
        doc = asdict(self)
        doc["chunks"] = [None if c is None else [c.run, c.sha256] for c in self.chunks]
        return json.dumps({"modelfetch_lease": 1, **doc}, separators=(",", ":")).encode()

    def next_beat(self, wall: float, **changes: Any) -> Lease:
        return replace(self, beat=self.beat + 1, wall=wall, **changes)


def _text(value: object, limit: int = 1024) -> str | None:
    if isinstance(value, str) and len(value) <= limit and value.isprintable():
        return value
    return None


def _int(value: object, low: int, high: int) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def parse_chunks(
    raw: object, size: int | None, chunk_size: int
) -> tuple[ChunkRef | None, ...] | None:
    """A published chunk list (null where a chunk is missing); None if any entry is
    malformed or there are more entries than the file has chunks."""
    if not isinstance(raw, list):
        return None
    limit = MAX_CHUNKS if size is None else chunk_count(size, chunk_size)
    if len(raw) > limit or (raw and size is None):
        return None
    refs: list[ChunkRef | None] = []
    for item in raw:
        if item is None:
            refs.append(None)
            continue
        if not (isinstance(item, list) and len(item) == 2):
            return None
        run, sha = item
        if not (isinstance(run, str) and _RUN.match(run) and isinstance(sha, str)):
            return None
        if not _SHA256.match(sha):
            return None
        refs.append(ChunkRef(run, sha))
    return tuple(refs)


@dataclass(frozen=True)
class FileFields:
    """What a lease or a manifest says about the file."""

    size: int | None
    sha256: str | None
    chunk_size: int
    chunks: tuple[ChunkRef | None, ...]


def parse_file_fields(doc: dict[str, Any]) -> FileFields | None:
    size, sha = doc.get("size"), doc.get("sha256")
    chunk_size = _int(doc.get("chunk_size"), MIN_CHUNK, MAX_CHUNK)
    if chunk_size is None:
        return None
    if size is not None and _int(size, 0, MAX_SIZE) is None:
        return None
    if sha is not None and not (isinstance(sha, str) and _SHA256.match(sha)):
        return None
    chunks = parse_chunks(doc.get("chunks"), size, chunk_size)
    return None if chunks is None else FileFields(size, sha, chunk_size, chunks)


def _number(value: object) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def decode_tier_doc(data: bytes, marker: str) -> dict[str, Any] | None:
    """The JSON object a lease or manifest holds, or None unless it is small, valid JSON
    and carries ``marker`` (version 1): what the tier returns may be anyone's bytes."""
    if len(data) > MAX_DOC_BYTES:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get(marker) != 1:
        return None
    return doc


def decode_lease(data: bytes) -> Lease | None:
    """A lease read from the tier, or None if it is not a well-formed lease of ours."""
    doc = decode_tier_doc(data, "modelfetch_lease")
    if doc is None:
        return None
    token, owner = doc.get("token"), _text(doc.get("owner"), 200)
    ttl, wall = _number(doc.get("ttl")), _number(doc.get("wall"))
    beat, done = _int(doc.get("beat"), 0, 2**62), _int(doc.get("done"), 0, MAX_SIZE)
    fields = parse_file_fields(doc)
    if not (isinstance(token, str) and _TOKEN.match(token)) or owner is None:
        return None
    if ttl is None or wall is None or beat is None or done is None or fields is None:
        return None
    return Lease(
        token=token,
        owner=owner if _PRINTABLE.match(owner) else "?",
        ttl=min(MAX_TTL, max(MIN_TTL, ttl)),
        chunk_size=fields.chunk_size,
        beat=beat,
        wall=wall,
        size=fields.size,
        sha256=fields.sha256,
        etag=_text(doc.get("etag")),
        last_modified=_text(doc.get("last_modified")),
        done=done,
        chunks=fields.chunks,
    )


class LeaseStore(Protocol):
    """Where one lease lives. ``create`` and ``swap`` answer the new ETag, or None when the
    store refused because the condition failed; a store may also ignore the condition."""

    def read(self) -> tuple[bytes, str] | None: ...

    def create(self, body: bytes) -> str | None: ...

    def swap(self, body: bytes, etag: str) -> str | None: ...

    def remove(self) -> None: ...


@dataclass(frozen=True)
class Held:
    """A lease this process holds, and the ETag its last write got."""

    lease: Lease
    etag: str


def _confirm(
    store: LeaseStore, lease: Lease, settle: float, sleep: Callable[[float], None]
) -> Held | None:
    """Read the lease back after ``settle`` seconds: ours only if our token is stored."""
    sleep(settle)
    current = store.read()
    if current is None:
        return None
    stored = decode_lease(current[0])
    if stored is None or stored.token != lease.token:
        return None
    return Held(stored, current[1])


def take(
    store: LeaseStore, lease: Lease, settle: float, sleep: Callable[[float], None]
) -> Held | None:
    """Create the lease where none exists; None if another machine has it."""
    if store.create(lease.encode()) is None:
        return None
    return _confirm(store, lease, settle, sleep)


def take_over(
    store: LeaseStore,
    lease: Lease,
    dead_etag: str,
    settle: float,
    sleep: Callable[[float], None],
) -> Held | None:
    """Replace a dead lease, only if it is still the one judged dead."""
    if store.swap(lease.encode(), dead_etag) is None:
        return None
    return _confirm(store, lease, settle, sleep)


def renew(store: LeaseStore, held: Held, lease: Lease) -> Held | None:
    """Write ``lease`` (the next beat of ``held``); None if the lease is no longer ours."""
    current = store.read()
    if current is None:
        return None
    stored = decode_lease(current[0])
    if stored is None or stored.token != held.lease.token:
        return None
    etag = store.swap(lease.encode(), current[1])
    return None if etag is None else Held(lease, etag)


def release(store: LeaseStore, held: Held) -> None:
    """Remove the lease if it is still ours (a successor's lease is left alone)."""
    current = store.read()
    if current is None:
        return
    stored = decode_lease(current[0])
    if stored is not None and stored.token == held.lease.token:
        store.remove()


@dataclass
class Watch:
    """A follower's view of another machine's lease: when did it last change?"""

    etag: str | None = None
    token: str | None = None
    changed: float = 0.0  # monotonic time of the last change seen
    progress: tuple[int, int] = (-1, -1)
    progressed: float = 0.0  # monotonic time the holder last reported progress

    def see(self, lease: Lease | None, etag: str, now: float) -> None:
        if etag != self.etag:
            self.etag = etag
            self.changed = now
        token = lease.token if lease is not None else None
        mark = (lease.done, lease.published) if lease is not None else (-1, -1)
        if token != self.token or mark != self.progress:
            self.token, self.progress, self.progressed = token, mark, now

    def dead(self, lease: Lease | None, now: float, wall: float, garbage_ttl: float) -> bool:
        """Not renewed within its ttl (by our clock), or abandoned long ago (by its clock).
        An unreadable lease lives ``garbage_ttl`` seconds, then is replaced like a dead one."""
        if lease is None:
            return now - self.changed >= garbage_ttl
        if now - self.changed >= lease.ttl:
            return True
        return wall - lease.wall > lease.ttl + MAX_SKEW

    def stalled(self, now: float, limit: float) -> bool:
        """The holder is alive but has reported no progress for ``limit`` seconds."""
        return now - self.progressed >= limit
