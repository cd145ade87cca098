"""Stream an HTTP(S) file into ``<entry>/<name>.part``, hashing as it arrives, with retries.

The part file is left in place on failure or cancellation so a later call (in any process)
can resume it; resume.py decides whether it may. Promotion of the finished part into the
cache is the cache's job (cache.py), not ours.
"""

from __future__ import annotations

import hashlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from urllib3.exceptions import HTTPError as Urllib3HTTPError

from .cache import CacheEntry
from .errors import DownloadError, IntegrityError
from .fsutil import lstat_regular, sha256_file, unlink_quiet
from .http_client import Response, RetryableError, open_url, parse_retry_after
from .options import EnsureOptions
from .progress import ProgressEmitter
from .redact import redact_url
from .resume import (
    PartState,
    discard_part,
    judge_response,
    load_part_state,
    part_paths,
    plan_resume,
    save_part_state,
)

CHUNK = 1024 * 1024
MAX_RESTARTS = 3
# Attempts that moved bytes forward do not use up max_retries (a flaky link that keeps
# delivering should finish), but only this many times, so every loop stays bounded.
MAX_PROGRESS_ATTEMPTS = 50

_STATUS_HINTS = {
    401: "the origin wants credentials: pass a bearer token or headers",
    403: "access denied: check the token and that it may read this file",
    404: "not found: check the URL, repo, revision and file name",
    410: "the file is gone from the origin",
}


@dataclass(frozen=True)
class FetchResult:
    sha256: str
    bytes: int
    etag: str | None
    last_modified: str | None
    not_modified: bool = False


class _Restart(Exception):
    """The partial file cannot be trusted; discard it and start from zero."""


class _Retry(RetryableError):
    def __init__(self, message: str, retry_after: float | None = None, progressed: bool = False):
        super().__init__(message, retry_after)
        self.progressed = progressed


def backoff_delay(failures: int, base: float, cap: float) -> float:
    """Exponential back-off with full jitter (spreads out a herd of retrying clients)."""
    ceiling = min(cap, base * (2 ** max(0, failures - 1)))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security


class HttpDownloader:
    def __init__(
        self,
        url: str,
        credentials: dict[str, str],
        options: EnsureOptions,
        emitter: ProgressEmitter,
    ) -> None:
        self.url = url
        self.display = redact_url(url)
        self.credentials = credentials
        self.opts = options
        self.emit = emitter

    def fetch(
        self,
        entry_dir: Path,
        file_name: str,
        cache_key: str,
        conditional: CacheEntry | None = None,
    ) -> FetchResult:
        """Download into the part file and return its verified digest; retry what is worth it."""
        failures = progress_attempts = restarts = 0
        cancel = self.opts.cancel
        while True:
            if cancel is not None:
                cancel.check()
            try:
                return self._attempt(entry_dir, file_name, cache_key, conditional)
            except _Restart as exc:
                restarts += 1
                discard_part(entry_dir, file_name)
                self.emit.emit("restart", message=str(exc))
                if restarts > MAX_RESTARTS:
                    raise DownloadError(
                        f"gave up on {self.display}: {exc} (restarted {MAX_RESTARTS} times)"
                    ) from None
            except RetryableError as exc:
                progressed = isinstance(exc, _Retry) and exc.progressed
                if (
                    progressed
                    and self.opts.max_retries
                    and progress_attempts < MAX_PROGRESS_ATTEMPTS
                ):
                    progress_attempts += 1
                else:
                    failures += 1
                if failures > self.opts.max_retries:
                    raise DownloadError(
                        f"download of {self.display} failed after {failures} attempt(s): {exc}"
                    ) from None
                delay = backoff_delay(failures or 1, self.opts.retry_backoff, self.opts.max_backoff)
                if exc.retry_after is not None:
                    delay = min(max(delay, exc.retry_after), self.opts.max_backoff)
                self.emit.emit("retry", message=f"{exc}; retrying in {delay:.1f}s")
                if cancel is not None:
                    cancel.sleep(delay)
                else:
                    time.sleep(delay)

    def _attempt(
        self,
        entry_dir: Path,
        file_name: str,
        cache_key: str,
        conditional: CacheEntry | None,
    ) -> FetchResult:
        part, state_path = part_paths(entry_dir, file_name)
        expected = self.opts.sha256
        plan = plan_resume(part, load_part_state(state_path, cache_key), expected, self.opts.resume)
        headers = dict(plan.headers)
        if conditional is not None and plan.offset == 0:
            if conditional.etag:
                headers["If-None-Match"] = conditional.etag
            elif conditional.last_modified:
                headers["If-Modified-Since"] = conditional.last_modified
        resp = open_url(
            self.url,
            headers=headers,
            credentials=self.credentials,
            connect_timeout=self.opts.connect_timeout,
            read_timeout=self.opts.read_timeout,
        )
        fully_read = False
        try:
            status = resp.status
            if status == 304 and conditional is not None:
                return FetchResult(
                    conditional.sha256,
                    conditional.bytes,
                    conditional.etag,
                    conditional.last_modified,
                    not_modified=True,
                )
            if status == 429 or status == 408 or status >= 500:
                raise _Retry(f"HTTP {status}", parse_retry_after(resp.header("Retry-After")))
            if status not in (200, 206, 416):
                hint = _STATUS_HINTS.get(status, "the origin refused the request")
                raise DownloadError(f"HTTP {status} for {self.display}: {hint}", status=status)
            verdict = judge_response(
                plan,
                status,
                resp.header("Content-Range"),
                resp.header("Content-Length"),
                resp.header("ETag"),
            )
            if verdict.decision == "restart":
                raise _Restart(verdict.reason)
            etag, last_modified = resp.header("ETag"), resp.header("Last-Modified")
            if verdict.decision == "truncate":
                if plan.offset:
                    self.emit.emit("restart", message=verdict.reason)
                save_part_state(
                    state_path, PartState(cache_key, etag, last_modified, verdict.total, expected)
                )
                hasher = hashlib.sha256()
            else:
                assert plan.state is not None
                etag = etag or plan.state.etag
                last_modified = last_modified or plan.state.last_modified
                _, kept, hasher = sha256_file(part, limit=verdict.offset)
                if kept != verdict.offset:
                    raise _Restart("partial file shrank while resuming")
            done = self._stream(resp, part, verdict.offset, verdict.total, hasher)
            fully_read = True
        finally:
            resp.close(fully_read=fully_read)
        digest = hasher.hexdigest()
        if expected and digest != expected:
            discard_part(entry_dir, file_name)
            if verdict.offset:
                raise _Restart("SHA-256 mismatch after resume")
            raise IntegrityError(
                f"SHA-256 mismatch for {self.display}: expected {expected}, got {digest}; "
                "the origin serves different bytes than you pinned"
            )
        return FetchResult(digest, done, etag, last_modified)

    def _stream(
        self,
        resp: Response,
        part: Path,
        offset: int,
        total: int | None,
        hasher: hashlib._Hash,
    ) -> int:
        cancel = self.opts.cancel
        if lstat_regular(part) is None:
            unlink_quiet(part)  # a symlink or directory squatting on the part name
        flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
        try:
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror}") from None
        done = offset
        self.emit.emit("start", offset, total)
        try:
            with os.fdopen(fd, "wb", buffering=CHUNK) as fh:
                if offset == 0:
                    fh.truncate(0)
                fh.seek(offset)
                try:
                    for chunk in resp.raw.stream(CHUNK, decode_content=False):
                        if cancel is not None and cancel.cancelled:
                            fh.flush()
                            cancel.check()
                        fh.write(chunk)
                        hasher.update(chunk)
                        done += len(chunk)
                        if total is not None and done > total:
                            raise _Restart("server sent more bytes than it announced")
                        self.emit.bytes(done, total)
                except (Urllib3HTTPError, ConnectionError, TimeoutError) as exc:
                    fh.flush()
                    raise _Retry(
                        f"connection lost after {done} bytes ({type(exc).__name__})",
                        progressed=done > offset,
                    ) from None
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as exc:
            raise DownloadError(f"cannot write {part}: {exc.strerror or exc}") from None
        if total is not None and done != total:
            raise _Retry(f"body ended at {done} of {total} bytes", progressed=done > offset)
        self.emit.bytes(done, total, force=True)
        return done
