"""ensure(): make a verified copy of a source available in the cache, by policy.

Flow: a lock-free fast path serves a hit whose stat stamp proves it verified; otherwise the
entry lock is taken (one writer per entry across threads and processes), the entry is
re-checked with repair (a waiter usually finds the holder's fresh result here), and only
then is the origin contacted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
from typing import Any

from .cache import Cache, CacheEntry
from .cancel import CancelToken
from .download import FetchResult, HttpDownloader
from .errors import CacheMissError
from .local_import import import_local_file
from .options import CachePolicy, EnsureOptions
from .progress import ProgressEmitter
from .resume import part_paths
from .source import ModelSource

log = logging.getLogger("modelfetch")


def _options(options: EnsureOptions | None, overrides: dict[str, Any]) -> EnsureOptions:
    base = options if options is not None else EnsureOptions()
    return base.merged(**overrides) if overrides else base


def credentials_for(source: ModelSource, opts: EnsureOptions) -> dict[str, str]:
    """Headers that must reach only the asked origin (http_client enforces the scoping)."""
    creds = dict(opts.headers or {})
    token = opts.bearer_token
    if token is None and source.kind == "hf":
        token = os.environ.get("HF_TOKEN") or None
    if token:
        creds["Authorization"] = f"Bearer {token}"
    return creds


def _fetch(
    source: ModelSource,
    directory: os.PathLike[str] | str,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
    conditional: CacheEntry | None = None,
) -> FetchResult:
    from pathlib import Path

    directory = Path(directory)
    if source.kind == "path":
        assert source.local_path is not None
        part, _ = part_paths(directory, source.file_name)
        return import_local_file(source.local_path, part, opts.sha256, emitter, opts.cancel)
    url = source.resolve_url(opts.hf_endpoint)
    downloader = HttpDownloader(url, credentials_for(source, opts), opts, emitter)
    return downloader.fetch(directory, source.file_name, source.cache_key, conditional)


def ensure(
    source: ModelSource | str | os.PathLike[str],
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> CacheEntry:
    """Return a verified cache entry for ``source``, downloading it if the policy says so.

    Keyword overrides are EnsureOptions fields, e.g. ``ensure(url, sha256=..., policy="refresh")``.
    """
    opts = _options(options, overrides)
    src = ModelSource.coerce(source)
    cache = Cache(opts.cache_dir)
    emitter = ProgressEmitter(opts.progress, src.display)
    policy = opts.policy

    if policy is CachePolicy.NO_CACHE:
        return _ensure_transient(cache, src, opts, emitter)

    if policy is not CachePolicy.REFRESH:
        hit = cache.lookup_fast(src, opts.sha256)
        if hit is not None:
            emitter.emit("cache_hit", hit.bytes, hit.bytes)
            return hit

    directory = cache.entry_dir(src)
    if policy is CachePolicy.CACHE_ONLY and not os.path.lexists(directory):
        raise CacheMissError(_miss_message(src))
    cache.prepare()
    lock = cache.lock(directory)
    on_wait = functools.partial(
        emitter.emit, "waiting", message="another download of this file is in progress"
    )
    with lock.hold(cancel=opts.cancel, timeout=opts.lock_timeout, on_wait=on_wait):
        existing = cache.lookup_verified(src, opts.sha256)
        if existing is not None and policy is not CachePolicy.REFRESH:
            emitter.emit("cache_hit", existing.bytes, existing.bytes)
            return existing
        if policy is CachePolicy.CACHE_ONLY:
            raise CacheMissError(_miss_message(src))
        directory.mkdir(exist_ok=True)
        log.debug("fetching %s into %s", src.display, directory)
        result = _fetch(src, directory, opts, emitter, conditional=existing)
        if result.not_modified and existing is not None:
            emitter.emit("not_modified", existing.bytes, existing.bytes)
            return cache.mark_revalidated(existing)
        entry = cache.promote(
            src,
            directory,
            sha256=result.sha256,
            size=result.bytes,
            etag=result.etag,
            last_modified=result.last_modified,
        )
    emitter.emit("done", entry.bytes, entry.bytes)
    return entry


def _ensure_transient(
    cache: Cache, src: ModelSource, opts: EnsureOptions, emitter: ProgressEmitter
) -> CacheEntry:
    cache.prepare()
    directory = cache.new_transient_dir(src)
    directory.mkdir()
    try:
        with cache.lock(directory).hold(cancel=opts.cancel):
            result = _fetch(src, directory, opts, emitter)
            entry = cache.promote(
                src,
                directory,
                sha256=result.sha256,
                size=result.bytes,
                etag=result.etag,
                last_modified=result.last_modified,
                transient=True,
            )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)  # a random-named dir can't be resumed
        raise
    emitter.emit("done", entry.bytes, entry.bytes)
    return entry


def _miss_message(src: ModelSource) -> str:
    return (
        f"{src.display} is not in the cache (or failed verification) and the cache-only "
        "policy forbids downloading it; run without cache-only, or fetch it first"
    )


async def ensure_async(
    source: ModelSource | str | os.PathLike[str],
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> CacheEntry:
    """``ensure`` in a worker thread; cancelling the task fires the cancel token."""
    opts = _options(options, overrides)
    if opts.cancel is None:
        opts = opts.merged(cancel=CancelToken())
    token = opts.cancel
    assert token is not None
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, functools.partial(ensure, source, opts))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        token.cancel()
        raise
