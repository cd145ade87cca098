"""Download an HTTP(S) file into ``<entry>/<name>.part``, hashing as it arrives, with retries.

One *attempt* is: decide from the part sidecar what can be kept (core/resume.py), send one
request (or, to resume several segments, one per segment), and let engine.py fill the
part. A large file from a server that honours ranges is fetched over several connections:
the first response keeps streaming segment 0 while the other segments are requested, so
going parallel costs no extra round trip. Failures that are worth it are retried around
whole attempts, and every attempt resumes what the previous one left on disk.

Every answer is checked before a byte of it is stored: the status, the Content-Range asked
for at request time, the ETag of the first answer on every 206, and no Content-Encoding.
A restart writes a checkpoint that claims nothing before the part is truncated (core/resume.py
explains why). A 200 to a range request whose validators differ from the first answer's
means the file changed: start over, and probe for ranges again.

Promotion of the finished part into the cache is the cache's job (cache/store.py), not ours.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from ..cache import CacheEntry
from ..cache.part import discard_part, load_part_state, part_paths, part_size, save_part_state
from ..cancel import CancelToken
from ..core.httpwire import REDIRECTS, origin_of, parse_retry_after, status_error
from ..core.resume import (
    PartState,
    ResumePlan,
    judge_response,
    partial_mismatch,
    plan_resume,
    validators_changed,
)
from ..core.retry import (
    GiveUp,
    Restart,
    RestartError,
    Retry,
    RetryableError,
    RetryCount,
    RetryPolicy,
    Wait,
    decide,
)
from ..core.segments import MIN_SPLIT, Segment, contiguous_frontier
from ..errors import DownloadError, IntegrityError, storage_error
from ..fsutil import lstat_regular, unlink_quiet
from ..http_client import Response, open_url
from ..options import EnsureOptions
from ..progress import ProgressEmitter
from ..redact import redact_url
from ..source import UrlSource
from .base import FetchResult, SourceFetcher, credentials_for
from .engine import LowSpeed, RangeUnsupported, Transfer

PARALLEL_MIN_BYTES = 2 * MIN_SPLIT
# A redirect target (a presigned CDN URL) answering one of these has most likely expired:
# go back to the URL we were given for a fresh link. Once per request, and at most this many
# times per download (Hugging Face's links last an hour: this is days of downloading).
LINK_REFUSED = frozenset({401, 403, 410})
MAX_LINK_REFRESHES = 1000
T = TypeVar("T")


def retrying(
    opts: EnsureOptions,
    emit: ProgressEmitter,
    display: str,
    attempt: Callable[[], T],
    restarted: Callable[[Restart], None] = lambda _: None,
) -> T:
    """Run ``attempt`` until it succeeds, retrying transient failures with back-off: the
    one retry loop of every request modelfetch sends (core/retry.py decides; this sleeps,
    lets ``restarted`` discard what a restart distrusts, and reports)."""
    policy = RetryPolicy(opts.max_retries, opts.retry_backoff, opts.max_backoff)
    count = RetryCount()
    cancel = opts.cancel
    # Bounded: every pass returns, raises, or uses up one of the policy's budgets.
    while True:
        if cancel is not None:
            cancel.check()
        try:
            return attempt()
        except RangeUnsupported as exc:
            error: Exception = exc
            outcome: Restart | Retry = Restart(str(exc), single_stream=True)
        except (RestartError, RetryableError) as exc:
            error, outcome = exc, exc.outcome
        draw = random.random()  # noqa: S311 - jitter, not security
        count, step = decide(policy, count, outcome, draw)
        if isinstance(outcome, Restart):
            restarted(outcome)
            emit.emit("restart", message=str(error))
            if isinstance(step, GiveUp):
                raise DownloadError(f"gave up on {display}: {error} ({step.reason})") from None
            continue
        if isinstance(step, GiveUp):
            raise DownloadError(f"download of {display} {step.reason}: {error}") from None
        assert isinstance(step, Wait)
        emit.emit("retry", message=f"{error}; retrying in {step.seconds:.1f}s")
        if cancel is not None:
            cancel.sleep(step.seconds)
        else:
            time.sleep(step.seconds)


def open_direct(part: Path) -> int | None:
    """A second descriptor on the part opened with O_DIRECT, or None where unsupported."""
    flag = getattr(os, "O_DIRECT", 0)
    if not flag:
        return None
    try:
        return os.open(part, os.O_WRONLY | flag | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # tmpfs and some FUSE filesystems refuse O_DIRECT


class UrlFetcher(SourceFetcher[UrlSource]):
    """An http(s) URL: one download, resumed and retried (credentials from the options)."""

    def fetch(self, directory: Path, conditional: CacheEntry | None = None) -> FetchResult:
        creds = credentials_for(self.source, self.opts)
        downloader = HttpDownloader(self.source.request_url, creds, self.opts, self.emitter)
        src = self.source
        return downloader.fetch(directory, src.file_name, src.cache_key, conditional)


class HttpDownloader:
    def __init__(
        self,
        url: str,
        credentials: dict[str, str],
        options: EnsureOptions,
        emitter: ProgressEmitter,
        git_sha1: str | None = None,
    ) -> None:
        self.url = url
        self.display = redact_url(url)
        self.credentials = credentials
        self.opts = options
        self.emit = emitter
        self.single_only = options.connections <= 1
        # A git-stored Hugging Face file: its git blob id, checked like a pinned SHA-256.
        self.git_sha1 = git_sha1
        # The link ``url`` last redirected to on another origin (a presigned CDN URL):
        # segments go there directly, and a refused one is replaced by asking ``url`` again.
        self._link: str | None = None
        self._link_refreshes = 0
        self._link_lock = threading.Lock()
        self._refresh_lock = threading.Lock()  # one refresh at a time, shared by the others

    def fetch(
        self,
        entry_dir: Path,
        file_name: str,
        cache_key: str,
        conditional: CacheEntry | None = None,
    ) -> FetchResult:
        """Download into the part file and return its verified digest; retry what is worth it."""
        return self.retrying(
            lambda: self._attempt(entry_dir, file_name, cache_key, conditional),
            lambda: discard_part(entry_dir, file_name),
        )

    def retrying(self, attempt: Callable[[], T], discard: Callable[[], None]) -> T:
        def restarted(restart: Restart) -> None:
            if restart.single_stream:
                self.single_only = True
            discard()

        return retrying(self.opts, self.emit, self.display, attempt, restarted)

    # -- one attempt ------------------------------------------------------------------------
    def _attempt(
        self,
        entry_dir: Path,
        file_name: str,
        cache_key: str,
        conditional: CacheEntry | None,
    ) -> FetchResult:
        part, state_path = part_paths(entry_dir, file_name)
        expected = self.opts.sha256
        state = load_part_state(state_path, cache_key)
        plan = plan_resume(part_size(part), state, expected, self.opts.resume)
        state = plan.state
        if (
            state is not None
            and state.total is not None
            and not (self.single_only and plan.offset > 0)
            and not (self.single_only and any(e is None for _, e, _ in state.segments))
        ):
            return self._resume_segments(part, state_path, state)

        headers = dict(plan.headers)
        if conditional is not None and plan.offset == 0:
            if conditional.etag:
                headers["If-None-Match"] = conditional.etag
            elif conditional.last_modified:
                headers["If-Modified-Since"] = conditional.last_modified
        resp = self._request(self.url, headers)
        try:
            if resp.status == 304 and conditional is not None:
                resp.close()
                return FetchResult.unchanged(conditional)
            self._check_status(resp)
            self._check_encoding(resp)
            verdict = judge_response(
                plan,
                resp.status,
                resp.header("Content-Range"),
                resp.header("Content-Length"),
                resp.header("ETag"),
                resp.header("Last-Modified"),
            )
            if verdict.decision == "restart":
                raise RestartError(verdict.reason, verdict.single_stream)
            etag, last_modified = resp.header("ETag"), resp.header("Last-Modified")
            total = verdict.total
            if verdict.decision == "truncate":
                if plan.offset:
                    self.emit.emit("restart", message=verdict.reason)
                new_state = PartState(cache_key, etag, last_modified, total, expected)
                parallel = self._parallel_eligible(resp, new_state, total)
                first = Segment(0, total, 0)  # the transfer hands out pieces of it
                segments = [first]
                fresh = True
                connections = self.opts.connections if parallel else 1
            else:
                assert plan.state is not None
                etag = etag or plan.state.etag
                last_modified = last_modified or plan.state.last_modified
                new_state = PartState(cache_key, etag, last_modified, total, expected)
                done = Segment(0, plan.offset, plan.offset)
                first = Segment(plan.offset, total, plan.offset)
                segments = [done, first]
                fresh = False
                connections = 1
            segment_url = resp.url  # later segments go straight to the final URL
        except BaseException:
            resp.close()
            raise
        return self._transfer(
            part,
            state_path,
            new_state,
            segments,
            (first, resp),
            fresh,
            segment_url,
            plan,
            connections,
        )

    def _resume_segments(self, part: Path, state_path: Path, state: PartState) -> FetchResult:
        segments = state.segment_list()
        self.emit.emit("start", contiguous_frontier(segments), state.total)
        plan = ResumePlan(1, {}, state)  # marks the result as resumed for the hash check
        connections = 1 if self.single_only else self.opts.connections
        segment_url = self._link or self.url
        return self._transfer(
            part, state_path, state, segments, None, False, segment_url, plan, connections
        )

    def _transfer(
        self,
        part: Path,
        state_path: Path,
        state: PartState,
        segments: list[Segment],
        first: tuple[Segment, Response] | None,
        fresh: bool,
        segment_url: str,
        plan: ResumePlan,
        connections: int,
    ) -> FetchResult:
        snapshot = [[s.start, s.end, s.pos] for s in segments]
        try:
            git = self._git_hasher(state.total)
            # The checkpoint first, then the part: a fresh start truncates the part, so the
            # old checkpoint (which may claim its bytes) must be gone before that happens.
            save_part_state(state_path, state.with_segments(snapshot))
            fd = self._open_part(part, state.total if fresh else None, fresh)
        except BaseException:
            if first is not None:
                first[1].close()
            raise
        direct_fd = open_direct(part) if self.opts.direct_io else None
        try:
            if first is not None:
                self.emit.emit("start", contiguous_frontier(segments), state.total)
            transfer = Transfer(
                fd,
                segments,
                state.total,
                direct_fd=direct_fd,
                open_segment=lambda start, end, stop: self._open_segment(
                    segment_url, state, start, end, stop
                ),
                persist=lambda snap: save_part_state(state_path, state.with_segments(snap)),
                on_bytes=self.emit.bytes,
                on_hashed=self.emit.hashed,
                cancel=self.opts.cancel,
                connections=connections,
                ramp_below=(
                    None
                    if self.opts.parallel_below_mbps is None
                    else self.opts.parallel_below_mbps * 1e6
                ),
                also_hash=git,
                low_speed=LowSpeed(self.opts.low_speed_limit, self.opts.low_speed_time),
                budget=self.opts.connection_budget,
                stall_seconds=self.opts.stall_seconds,
            )
            digest, size = transfer.run(first)
        finally:
            os.close(fd)
            if direct_fd is not None:
                os.close(direct_fd)
        self.emit.bytes(size, size, force=True)
        expected = self.opts.sha256
        if expected and digest != expected:
            discard_part(part.parent, part.name[: -len(".part")])
            if plan.offset or plan.state is not None:
                raise RestartError("SHA-256 mismatch after resume")
            raise IntegrityError(
                f"SHA-256 mismatch for {self.display}: expected {expected}, got {digest}; "
                "the origin serves different bytes than you pinned"
            )
        if git is not None and git.hexdigest() != self.git_sha1:
            discard_part(part.parent, part.name[: -len(".part")])
            if plan.offset or plan.state is not None:
                raise RestartError("git blob SHA-1 mismatch after resume")
            raise IntegrityError(
                f"git blob SHA-1 mismatch for {self.display}: the hub names {self.git_sha1}, "
                f"the {size} bytes received hash to {git.hexdigest()}"
            )
        return FetchResult(digest, size, state.etag, state.last_modified)

    def _git_hasher(self, total: int | None) -> hashlib._Hash | None:
        """A SHA-1 primed with git's blob header, fed in file order next to the SHA-256."""
        if self.git_sha1 is None:
            return None
        if total is None:
            raise IntegrityError(
                f"{self.display} is a git-stored file sent without a length: its git blob "
                "id cannot be checked"
            )
        return hashlib.sha1(b"blob %d\x00" % total, usedforsecurity=False)

    # -- helpers ------------------------------------------------------------------------------
    def _request(
        self, url: str, headers: dict[str, str], cancel: CancelToken | None = None
    ) -> Response:
        """Send one request; if a link ``self.url`` redirected to is refused (401/403/410:
        a presigned URL that expired, as Hugging Face's CDN links do after an hour), ask
        ``self.url`` once more for a fresh link instead of failing."""
        with self._link_lock:
            if url != self.url and self._link is not None:
                url = self._link  # another request may have refreshed it meanwhile
        resp = self._open(url, headers, cancel)
        if resp.status not in LINK_REFUSED or origin_of(resp.url) == origin_of(self.url):
            return resp
        fresh = self._fresh_link(resp.url)
        if fresh is None:
            return resp  # out of refreshes: the caller reports the refusal
        resp.close()
        return self._open(fresh, headers, cancel)

    def _fresh_link(self, refused: str) -> str | None:
        """A link to use instead of ``refused``: one another connection just got, or a new
        one from ``self.url`` (its redirect, not followed). None once the budget is spent."""
        with self._refresh_lock:  # connections refused together wait for one refresh
            with self._link_lock:
                if self._link not in (None, refused):
                    return self._link
                if self._link_refreshes >= MAX_LINK_REFRESHES:
                    return None
                self._link_refreshes += 1
            self.emit.emit("retry", message=f"download link expired; asking {self.display}")
            probe = open_url(
                self.url,
                headers={},
                credentials=self.credentials,
                connect_timeout=self.opts.connect_timeout,
                read_timeout=self.opts.read_timeout,
                follow_cross_origin=False,
                cancel=self.opts.cancel,
            )
            probe.close()  # only its Location matters
            location = probe.header("Location")
            try:
                target = urllib.parse.urljoin(probe.url, location.strip()) if location else ""
                elsewhere = bool(target) and origin_of(target) != origin_of(self.url)
            except ValueError:  # a malformed Location: let the plain request report it
                elsewhere = False
            if probe.status not in REDIRECTS or not elsewhere:
                return self.url  # no link handed out this time: ask the origin itself
            with self._link_lock:
                self._link = target
            return target

    def _open(
        self, url: str, headers: dict[str, str], cancel: CancelToken | None = None
    ) -> Response:
        same_origin = origin_of(url) == origin_of(self.url)
        resp = open_url(
            url,
            headers=headers,
            credentials=self.credentials if same_origin else {},
            connect_timeout=self.opts.connect_timeout,
            read_timeout=self.opts.read_timeout,
            cancel=cancel or self.opts.cancel,
        )
        if resp.status < 300 and origin_of(resp.url) != origin_of(self.url):
            with self._link_lock:
                self._link = resp.url
        return resp

    def _check_status(self, resp: Response) -> None:
        if resp.status in (200, 206, 416):
            return
        if resp.status in LINK_REFUSED and origin_of(resp.url) != origin_of(self.url):
            # Not the origin's verdict on our credentials (they never go there): the server
            # it sent us to refused even a freshly issued link.
            raise DownloadError(
                f"HTTP {resp.status} from {redact_url(resp.url)}, where {self.display} "
                "redirected: that server refused the download link, also a fresh one",
                status=resp.status,
            )
        retry_after = parse_retry_after(resp.header("Retry-After"), time.time())
        raise status_error(resp.status, self.display, retry_after)

    def _check_encoding(self, resp: Response) -> None:
        """We ask for ``Accept-Encoding: identity``; a compressed body is not the file."""
        coding = (resp.header("Content-Encoding") or "").strip().lower()
        if coding and coding != "identity":
            shown = "".join(c for c in coding[:40] if c.isprintable())
            raise DownloadError(
                f"{self.display} was sent with Content-Encoding: {shown}, which was not asked "
                "for; refusing to store encoded bytes as the file (a server or proxy "
                "compresses it: serve it as identity)"
            )

    def _parallel_eligible(self, resp: Response, state: PartState, total: int | None) -> bool:
        if self.single_only or total is None or total < PARALLEL_MIN_BYTES:
            return False
        if "bytes" not in (resp.header("Accept-Ranges") or "").lower():
            return False
        # Pieces from different versions of a file must never be stitched together.
        return state.if_range() is not None or self.opts.sha256 is not None

    def _open_segment(
        self, url: str, state: PartState, start: int, end: int, stop: CancelToken
    ) -> Response:
        """Request bytes [start, end) and check the answer against exactly that request."""
        headers = {"Range": f"bytes={start}-{end - 1}"}
        validator = state.if_range()
        if validator is not None:
            headers["If-Range"] = validator
        resp = self._request(url, headers, stop)
        try:
            self._check_status(resp)
            self._check_encoding(resp)
            etag, last_modified = resp.header("ETag"), resp.header("Last-Modified")
            if resp.status == 200:
                if validators_changed(state, etag, last_modified):
                    # If-Range did its job: this is a new version. Start over, in parallel.
                    raise RestartError("the file changed on the server")
                raise RangeUnsupported("the server sent the whole file for a range request")
            expected_range = f"bytes {start}-{end - 1}/{state.total}"
            length = (resp.header("Content-Length") or "").strip()
            if (
                resp.status != 206
                or (resp.header("Content-Range") or "").strip() != expected_range
                or (length and length != str(end - start))
            ):
                raise RestartError(f"unexpected answer to a segment request ({resp.status})")
            mismatch = partial_mismatch(state, etag, last_modified)
            if mismatch is not None:
                raise RestartError(mismatch[0], single_stream=mismatch[1])
        except BaseException:
            resp.close()
            raise
        return resp

    def _open_part(self, part: Path, preallocate: int | None, truncate: bool) -> int:
        if lstat_regular(part) is None:
            unlink_quiet(part)  # a symlink or directory squatting on the part name
        # Continuing a part never creates one: an empty file would not hold the bytes its
        # checkpoint claims. Only a fresh start (whose checkpoint claims nothing) may.
        create = os.O_CREAT if truncate else 0
        flags = os.O_RDWR | create | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(part, flags, 0o644)
        except FileNotFoundError:
            if truncate:
                raise DownloadError(f"cannot write {part}: the folder is gone") from None
            raise RestartError("the partial file vanished") from None
        except OSError as exc:
            raise storage_error(exc, part) from None
        try:
            if truncate:
                os.ftruncate(fd, 0)
            if preallocate:
                try:
                    # Reserve the space now: a full disk fails here, not at 97%.
                    os.posix_fallocate(fd, 0, preallocate)
                except OSError as exc:
                    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
                        raise storage_error(exc, part, needed=preallocate) from None
                    os.ftruncate(fd, preallocate)  # filesystem without fallocate
        except OSError as exc:
            os.close(fd)
            raise storage_error(exc, part) from None
        except BaseException:
            os.close(fd)
            raise
        return fd
