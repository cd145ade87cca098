"""Resume rules: when a partial file may be continued, and how a response is judged.

A ``.part`` file is only continued with ``Range`` when we can tell the bytes on disk and the
bytes the server will send belong to the same version of the file:

* a strong ETag recorded when the part was started (sent as ``If-Range``), or
* a Last-Modified date (sent as ``If-Range``), or
* a caller-supplied SHA-256, which catches any mix-up at the end.

The server's answer then decides: ``206`` with a matching ``Content-Range`` and the same
ETag appends (a ``206`` without the ETag we recorded proves nothing: restart); ``200`` means
the server ignored the range or the file changed, so we truncate and take the full body from
this same response; ``416`` or a ``206`` that does not fit restarts from zero. The
``.part.json`` sidecar (the *checkpoint*) holds the validator across processes.

Crash safety rests on one ordering rule: the checkpoint never claims a byte the part does not
durably hold. Positions are recorded only after an ``fdatasync`` of the part (fetch/engine.py),
and before a part is truncated or removed its checkpoint is replaced by one that claims
nothing (or removed), durably, first. A ``kill -9`` at any instant leaves a state that is
safe to resume. This module only decides; cache/part.py reads and writes the files.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from typing import Literal

from .segments import Segment, contiguous_frontier, validate_segments
from .sidecar import MAX_VALIDATOR, storable_validator

PART_SUFFIX = ".part"
PART_STATE_SUFFIX = ".part.json"
MAX_PART_STATE = 16 * 1024
_CONTENT_RANGE = re.compile(r"^bytes (\d{1,19})-(\d{1,19})/(\d{1,19}|\*)$")


@dataclass(frozen=True)
class PartState:
    cache_key: str
    etag: str | None
    last_modified: str | None
    total: int | None
    sha256: str | None
    # [start, end, pos] per segment, tiling [0, total): bytes [start, pos) are on disk.
    segments: tuple[tuple[int, int | None, int], ...] = ()

    def segment_list(self) -> list[Segment]:
        return [Segment(start, end, pos) for start, end, pos in self.segments]

    def with_segments(self, snapshot: list[list[int | None]]) -> PartState:
        segs = tuple((int(a or 0), b, int(c or 0)) for a, b, c in snapshot)
        return PartState(
            self.cache_key, self.etag, self.last_modified, self.total, self.sha256, segs
        )

    def if_range(self) -> str | None:
        if self.etag and not self.etag.startswith("W/"):
            return self.etag  # RFC 9110: If-Range needs a strong validator
        return self.last_modified


def parse_part_state(data: bytes, cache_key: str) -> PartState | None:
    """A part sidecar's bytes as a PartState; anything odd means 'no usable state' (never an
    exception)."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("cache_key") != cache_key:
        return None

    def text(key: str) -> str | None:
        value = doc.get(key)
        return value if isinstance(value, str) and len(value) <= MAX_VALIDATOR else None

    total = doc.get("total")
    if not isinstance(total, int) or isinstance(total, bool) or not 0 <= total < 2**62:
        total = None
    segments = validate_segments(doc.get("segments"), total)
    if segments is None:
        return None  # without trustworthy positions nothing on disk can be kept
    return PartState(
        cache_key,
        text("etag"),
        text("last_modified"),
        total,
        text("sha256"),
        tuple((seg.start, seg.end, seg.pos) for seg in segments),
    )


def part_state_json(state: PartState) -> bytes:
    """The part sidecar's bytes; validators the reader would refuse are left out, so what is
    written always reads back (a resume then relies on the other validator or the pin)."""
    doc = asdict(state)
    doc["etag"] = storable_validator(state.etag)
    doc["last_modified"] = storable_validator(state.last_modified)
    return json.dumps(doc).encode("utf-8")


def _opaque(etag: str) -> str:
    return etag[2:] if etag.startswith("W/") else etag


def partial_mismatch(
    state: PartState, etag: str | None, last_modified: str | None
) -> tuple[str, bool] | None:
    """Why a 206 cannot be joined to bytes fetched under ``state``, or None if it can.

    The flag says the server only left the validator out (it proves nothing, but a server
    that does this will do it again: use one stream). RFC 9110 asks a 206 to carry the
    ETag a 200 would have; a different one means another version of the file.
    """
    if state.etag:
        if not etag:
            return "a 206 answer without the ETag of the first one", True
        strong = not state.etag.startswith("W/")
        if (etag != state.etag) if strong else (_opaque(etag) != _opaque(state.etag)):
            return "ETag changed on the server", False
    if state.last_modified and last_modified and last_modified != state.last_modified:
        return "Last-Modified changed on the server", False
    return None


def validators_changed(state: PartState, etag: str | None, last_modified: str | None) -> bool:
    """A 200 carries validators other than those recorded: the file itself changed."""
    if state.etag and etag and _opaque(etag) != _opaque(state.etag):
        return True
    return bool(state.last_modified and last_modified and last_modified != state.last_modified)


@dataclass(frozen=True)
class ResumePlan:
    offset: int  # contiguous bytes of the part we keep; 0 means a full download
    headers: dict[str, str]
    state: PartState | None


def plan_resume(
    part_size: int | None, state: PartState | None, expected_sha256: str | None, enabled: bool
) -> ResumePlan:
    """What to keep of a part of ``part_size`` bytes (None: no regular file there) and
    what to ask the origin for."""
    if not enabled or state is None or not state.segments:
        return ResumePlan(0, {}, None)
    needed = max(pos for _, _, pos in state.segments)
    if part_size is None or part_size < needed:
        return ResumePlan(0, {}, None)  # the part lost data the sidecar says it has
    if state.sha256 and expected_sha256 and state.sha256 != expected_sha256:
        return ResumePlan(0, {}, None)  # the part was started for another expected file
    validator = state.if_range()
    if validator is None and expected_sha256 is None:
        return ResumePlan(0, {}, None)  # no way to tell whether the origin changed
    size = contiguous_frontier(state.segment_list())
    if size == 0 or (state.total is not None and size >= state.total):
        # Nothing contiguous to continue from with one stream (or nothing left to ask
        # for); the segments themselves may still be resumed (fetch/http.py decides).
        return ResumePlan(0, {}, state)
    headers = {"Range": f"bytes={size}-"}
    if validator is not None:
        headers["If-Range"] = validator
    return ResumePlan(size, headers, state)


Decision = Literal["append", "truncate", "restart"]


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    offset: int  # where the body's first byte goes
    total: int | None  # full size of the file, if known
    reason: str = ""
    single_stream: bool = False  # restart with one stream (ranges cannot be trusted here)


def judge_response(
    plan: ResumePlan,
    status: int,
    content_range: str | None,
    content_length: str | None,
    etag: str | None,
    last_modified: str | None = None,
) -> Verdict:
    """Decide what to do with a 200/206/416 answer to the request ``plan`` produced."""
    length = _parse_length(content_length)
    if status == 200:
        reason = "server sent the whole file" if plan.offset else ""
        return Verdict("truncate", 0, length, reason)
    if status == 416:
        return Verdict("restart", 0, None, "server answered 416 Range Not Satisfiable")
    if status != 206:
        return Verdict("restart", 0, None, f"unexpected status {status}")
    if plan.offset == 0:
        return Verdict("restart", 0, None, "206 Partial Content for a request without Range")
    match = _CONTENT_RANGE.match((content_range or "").strip())
    if not match:
        return Verdict("restart", 0, None, "206 without a valid Content-Range")
    start, end = int(match.group(1)), int(match.group(2))
    total = None if match.group(3) == "*" else int(match.group(3))
    known = plan.state.total if plan.state else None
    if start != plan.offset or end < start:
        return Verdict("restart", 0, None, f"Content-Range starts at {start}, not {plan.offset}")
    if total is not None and end != total - 1:
        return Verdict("restart", 0, None, "Content-Range does not run to the end of the file")
    if known is not None and total is not None and total != known:
        return Verdict("restart", 0, None, "file size changed on the server")
    if length is not None and length != end - start + 1:
        return Verdict("restart", 0, None, "Content-Length disagrees with Content-Range")
    mismatch = partial_mismatch(plan.state, etag, last_modified) if plan.state else None
    if mismatch is not None:
        return Verdict("restart", 0, None, mismatch[0], single_stream=mismatch[1])
    return Verdict("append", start, total if total is not None else known)


def _parse_length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit() or len(value.strip()) > 19:
        return None
    return int(value.strip())
