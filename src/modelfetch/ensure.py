"""ensure(): make a verified copy of a source available in the cache, by policy.

Flow: a lock-free fast path serves a hit whose stat stamp proves it verified; otherwise the
entry lock is taken (one writer per entry across threads and processes), the entry is
re-checked with repair (a waiter usually finds the holder's fresh result here), and only
then is the origin contacted.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard, TypeVar

from .cache import Cache, CacheEntry
from .cache.sets import assemble, siblings
from .cancel import CancelToken
from .errors import (
    CacheMissError,
    CacheStorageError,
    InvalidSourceError,
    ReadOnlyCacheError,
)
from .fetch.base import Pins, credentials_for, fetcher_for
from .options import CachePolicy, EnsureOptions, env_hf_cache_setting, env_offline, env_remote
from .progress import ProgressEmitter
from .source import HubFile, HubTag, ModelSource, PathSource

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
T = TypeVar("T")

# The download machinery (urllib3, the transfer engine, asyncio) is imported inside the
# functions that need it, so that a cache hit, the common case in scripts and service
# starts, costs only the cache lookup and not ~100 ms of imports.
if TYPE_CHECKING:
    from .fetch.base import FetchResult
    from .fetch.tier import RemoteTier


def merge_options(options: EnsureOptions | None, overrides: dict[str, Any]) -> EnsureOptions:
    """``options`` (the defaults when None) with the keyword ``overrides`` applied."""
    base = options if options is not None else EnsureOptions()
    return base.merged(**overrides) if overrides else base


def _fetch(
    source: ModelSource,
    directory: Path,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
    conditional: CacheEntry | None = None,
    pins: Pins | None = None,
) -> FetchResult:
    def adopt(src: HubFile, where: Path, name: str | None, size: int | None) -> FetchResult | None:
        return adopt_from_hub_cache(src, where, opts, emitter, name, size)

    fetcher = fetcher_for(source, opts, emitter, pins, adopt)
    return fetcher.fetch(directory, conditional)


def adopt_from_hub_cache(
    source: HubFile,
    directory: Path,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
    name: str | None = None,
    size: int | None = None,
) -> FetchResult | None:
    """Take the file from the Hugging Face cache instead of the network, if it is there and
    hashes right: by blob ``name`` (SHA-256 or git blob id) when the hub told us, else by
    ``refs/<revision>`` and the snapshot link, with no request at all."""
    from .cache.part import discard_part, part_paths
    from .fetch.base import FetchResult
    from .hfcache import HubCacheRepo, hub_cache_setting

    setting = hub_cache_setting(opts.hf_cache)
    if setting.root is None:
        return None
    repo = HubCacheRepo(setting.root, source.repo_id)
    commit = None
    if name is None:
        commit = repo.read_ref(source.revision)
        name = repo.pointer_blob(commit, source.hf_path) if commit else None
        if name is None:
            return None
    pinned = opts.sha256 if len(name) == 64 else opts.git_sha1
    if pinned is not None and pinned != name:
        return None  # the hub cache holds other content than the caller wants
    part, _ = part_paths(directory, source.file_name)  # the caller made the entry directory
    try:
        adopted = repo.adopt(name, size, part)
    except OSError as exc:  # their cache, their permissions: then we download it
        emitter.emit("warning", message=f"could not take it from the Hugging Face cache ({exc})")
        return None
    if adopted is None:
        return None
    if opts.sha256 is not None and adopted.sha256 != opts.sha256:
        discard_part(directory, source.file_name)
        return None
    how = "linked" if adopted.linked else "copied"
    emitter.emit("adopted", adopted.size, adopted.size, f"{how} from {repo.blob(name)}")
    # The content hashed to its name: a 40-hex name is its git blob id, verified.
    git_sha1 = name if len(name) == 40 else None
    return FetchResult(adopted.sha256, adopted.size, None, None, commit=commit, git_sha1=git_sha1)


def ensure(
    source: ModelSource | str | os.PathLike[str],
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> CacheEntry:
    """Return a verified cache entry for ``source``, downloading it if the policy says so.

    Keyword overrides are EnsureOptions fields, e.g. ``ensure(url, sha256=..., policy="refresh")``.
    A shard of a split GGUF brings all its shards; the entry's ``set_path`` is the first
    shard in a directory that holds them all. With ``hf_cache`` (or MODELFETCH_HF_CACHE)
    asking to publish, an ``hf://`` file (each shard of a set) is also published into the
    Hugging Face cache.
    """
    opts = merge_options(options, overrides)
    src = ModelSource.coerce(source)
    cache = Cache(opts.cache_dir)
    pins: Pins = {}
    if isinstance(src, HubTag):
        offline = offline_for(src) or opts.policy is CachePolicy.CACHE_ONLY
        src = _resolve_tag(src, opts, cache, offline, pins)
    group = _shard_group(src, opts)
    sources = group or [src]
    entries = [_ensure_one(one, opts, cache, pins) for one in sources]
    if isinstance(src, HubFile) and _publish_wanted(opts):
        for one, entry in zip(sources, entries, strict=True):
            if isinstance(one, HubFile):  # a hub file's shards are hub files
                _publish_file(cache, one, entry, opts, pins)
    return _with_set(cache, src, group, entries) if group else entries[0]


def ensure_file(src: ModelSource, opts: EnsureOptions) -> CacheEntry:
    """One file as ``ensure`` gets it, without gathering a split set or publishing into the
    Hugging Face cache: ``snapshot`` publishes a commit's files together, once all are in."""
    return _ensure_one(src, opts, Cache(opts.cache_dir))


def _publish_wanted(opts: EnsureOptions) -> bool:
    if opts.hf_cache is None and env_hf_cache_setting() is None:
        return False  # the usual case, decided without loading hfcache
    from .hfcache import hub_cache_setting

    return hub_cache_setting(opts.hf_cache).publish


def _hub_file(src: HubFile, entry: CacheEntry) -> tuple[str, str] | None:
    """(commit, blob name) of an hf:// entry in the Hugging Face cache: the blob is named as
    the hub's ETag names the file (git blob id or SHA-256). None: the commit is unknown."""
    commit = entry.commit or (src.revision if _COMMIT.match(src.revision) else None)
    return None if commit is None else (commit, entry.git_sha1 or entry.sha256)


def _published(sources: list[ModelSource], entries: list[CacheEntry], opts: EnsureOptions) -> bool:
    """Every one of these hits is in the Hugging Face cache already (a hit asks no hub, so
    an existing ref is left as it is)."""
    from .hfcache import HubCacheRepo, hub_cache_setting

    root = hub_cache_setting(opts.hf_cache).root
    for src, entry in zip(sources, entries, strict=True):
        if root is None or not isinstance(src, HubFile):
            return False
        found = _hub_file(src, entry)
        if found is None:
            return False
        commit, name = found
        repo = HubCacheRepo(root, src.repo_id)
        if not repo.holds(commit, src.revision, src.hf_path, name, entry.path, move_ref=False):
            return False
    return True


def _publish_file(
    cache: Cache, src: HubFile, entry: CacheEntry, opts: EnsureOptions, pins: Pins
) -> None:
    """Publish one verified hf:// file: blob, ``snapshots/<commit>/<path>`` link and
    ``refs/<revision>``, but no ``trees/<commit>.json``: a listing claims the whole commit,
    and huggingface_hub would then take this one file's snapshot for a complete one."""
    from .hfcache import HubCacheRepo, hub_cache_setting

    root = hub_cache_setting(opts.hf_cache).root
    assert root is not None
    found = _hub_file(src, entry)
    if found is None:
        ProgressEmitter(opts.progress, src.display).emit(
            "warning",
            message="not published into the Hugging Face cache: the hub's commit of this "
            "cached file is unknown (a refresh asks the hub for it)",
        )
        return
    commit, name = found
    # Only a commit the hub named during this call may move an existing ref: one remembered
    # from an earlier download could be older than what the ref names now.
    move_ref = pins.get((src.repo_id, src.revision)) == commit
    repo = HubCacheRepo(root, src.repo_id)
    if repo.holds(commit, src.revision, src.hf_path, name, entry.path, move_ref=move_ref):
        return  # already there: a repeated hit costs a few lstat calls
    repo.publish_named(
        commit, src.revision, None, [(src.hf_path, name, entry.path)], move_ref=move_ref
    )
    try:
        cache.restamp_linked(entry)
    except CacheStorageError:
        pass  # a read-only root: the next hit re-hashes once, nothing is wrong


def quick_hit(
    source: ModelSource | str | os.PathLike[str], options: EnsureOptions | None = None
) -> CacheEntry | None:
    """What ``ensure`` would return when that takes no lock, no hashing and no request;
    otherwise None (and no event is sent): then ``ensure`` does the work. Invalid input
    raises as in ``ensure``.

    The same steps as ``ensure`` (policy, offline mode, remembered tags, split sets, the
    lock-free ``Cache.lookup_fast``), stopped where ``ensure`` would lock or go online. It
    lets the command line answer a hit without loading the download machinery.
    """
    opts = options if options is not None else EnsureOptions()
    src = ModelSource.coerce(source)
    cache = Cache(opts.cache_dir)
    if isinstance(src, HubTag):
        try:
            src = _resolve_tag(src, opts, cache, offline=True, pins={})
        except CacheMissError:
            return None
    group = _shard_group(src, opts)
    hits = [_lookup_hit(shard, opts, cache) for shard in group or [src]]
    entries = [hit for hit in hits if hit is not None]
    if len(entries) != len(hits):
        return None
    if (
        isinstance(src, HubFile)
        and _publish_wanted(opts)
        and not _published(group or [src], entries, opts)
    ):
        return None  # ensure publishes it
    for entry, shard in zip(entries, group or [src], strict=True):
        ProgressEmitter(opts.progress, shard.display).emit("cache_hit", entry.size, entry.size)
    return _with_set(cache, src, group, entries) if group else entries[0]


def _resolve_tag(
    src: HubTag, opts: EnsureOptions, cache: Cache, offline: bool, pins: Pins
) -> HubFile:
    """hf://owner/repo:TAG -> the file it names (remembered under refs/, or listed)."""
    from .quant import resolve as resolve_quant

    return resolve_quant(src, opts, cache.layout, credentials_for(src, opts), offline, pins)


def _shard_group(src: ModelSource, opts: EnsureOptions) -> list[ModelSource] | None:
    group = siblings(src) if opts.shards else None
    if group and opts.sha256 is not None:
        raise InvalidSourceError(
            "a pinned sha256 names one file; a split model has several (pass shards=False "
            "to fetch a single shard)"
        )
    return group


def _with_set(
    cache: Cache, src: ModelSource, group: list[ModelSource], entries: list[CacheEntry]
) -> CacheEntry:
    folder = assemble(cache.layout, group, [e.path for e in entries])
    asked = [e for e, s in zip(entries, group, strict=True) if s.cache_key == src.cache_key]
    mine = asked[0] if asked else entries[0]
    first = sorted(folder.iterdir())[0]
    return replace(mine, set_path=first)


def _policy(src: ModelSource, opts: EnsureOptions) -> CachePolicy:
    return CachePolicy.CACHE_ONLY if offline_for(src) else opts.policy


def _lookup_hit(src: ModelSource, opts: EnsureOptions, cache: Cache) -> CacheEntry | None:
    """A hit the policy lets us serve without a lock or a request (stat stamp proven)."""
    if _policy(src, opts) in (CachePolicy.NO_CACHE, CachePolicy.REFRESH):
        return None
    hit = cache.lookup_fast(src, opts.sha256)
    return None if hit is None else replace(hit, via="cache")


def _ensure_one(
    src: ModelSource, opts: EnsureOptions, cache: Cache, pins: Pins | None = None
) -> CacheEntry:
    emitter = ProgressEmitter(opts.progress, src.display, watcher=opts.watcher)
    policy = _policy(src, opts)

    if policy is CachePolicy.NO_CACHE:
        return _ensure_transient(cache, src, opts, emitter, pins)

    hit = _lookup_hit(src, opts, cache)
    if hit is not None:
        emitter.emit("cache_hit", hit.size, hit.size)
        return hit

    if (
        policy is CachePolicy.CACHE_ONLY
        and not cache.has_entry_dir(src)
        and not _may_adopt(src, opts)
    ):
        raise CacheMissError(_miss_message(src))
    try:
        return _ensure_locked(src, opts, cache, policy, emitter, pins)
    except ReadOnlyCacheError:
        # No lock file can be made (a read-only root): a verified hit needs no write, so
        # check the entry without changing anything. A miss or refresh cannot be served.
        if policy is CachePolicy.REFRESH:
            raise
        hit = cache.lookup_readonly(src, opts.sha256)
        if hit is not None:
            emitter.emit("cache_hit", hit.size, hit.size)
            return replace(hit, via="cache")
        if policy is CachePolicy.CACHE_ONLY:
            raise CacheMissError(_miss_message(src)) from None
        raise


def _ensure_locked(
    src: ModelSource,
    opts: EnsureOptions,
    cache: Cache,
    policy: CachePolicy,
    emitter: ProgressEmitter,
    pins: Pins | None,
) -> CacheEntry:
    directory = cache.entry_dir(src)
    cache.prepare()
    lock = cache.lock(directory)
    on_wait = functools.partial(
        emitter.emit, "waiting", message="another download of this file is in progress"
    )
    with lock.hold(cancel=opts.cancel, timeout=opts.lock_timeout, on_wait=on_wait):
        existing = cache.lookup_verified(src, opts.sha256)
        if existing is not None and policy is not CachePolicy.REFRESH:
            emitter.emit("cache_hit", existing.size, existing.size)
            return replace(existing, via="cache")
        if policy is not CachePolicy.REFRESH and _may_adopt(src, opts):
            cache.make_entry_dir(directory, src.file_name)
            adopted = adopt_from_hub_cache(src, directory, opts, emitter)
            if adopted is not None:
                entry = _promote(cache, src, directory, adopted)
                emitter.emit("done", entry.size, entry.size)
                return replace(entry, via="hf_cache")
        if policy is CachePolicy.CACHE_ONLY:
            raise CacheMissError(_miss_message(src))
        cache.make_entry_dir(directory, src.file_name)
        import logging  # already loaded by urllib3 on this path; not on a hit

        logging.getLogger("modelfetch").debug("fetching %s into %s", src.display, directory)
        tier = _tier(opts)
        outcome = None
        if (
            tier is not None
            and policy is not CachePolicy.REFRESH
            and not isinstance(src, PathSource)
        ):
            from . import fleet

            outcome = fleet.fetch(
                tier,
                src,
                directory,
                opts,
                emitter,
                lambda: _fetch(src, directory, opts, emitter, None, pins),
            )
        if outcome is not None:
            result, via = outcome.result, outcome.via
        else:
            result = _fetch(src, directory, opts, emitter, existing, pins)
            via = "origin"
        if result.not_modified and existing is not None:
            emitter.emit("not_modified", existing.size, existing.size)
            revalidated = cache.mark_revalidated(existing, commit=result.commit)
            return replace(revalidated, via="revalidated")
        entry = _promote(cache, src, directory, result)
        if tier is not None and outcome is None:
            _upload_to_tier(tier, src, entry, opts, emitter)
    emitter.emit("done", entry.size, entry.size)
    return replace(entry, via=via)


def _may_adopt(src: ModelSource, opts: EnsureOptions) -> TypeGuard[HubFile]:
    """Cheap test: could the hub cache hold this file (before taking locks for it)?"""
    if not isinstance(src, HubFile):
        return False
    from .hfcache import HubCacheRepo, hub_cache_setting

    root = hub_cache_setting(opts.hf_cache).root
    return root is not None and HubCacheRepo(root, src.repo_id).folder.is_dir()


def _promote(
    cache: Cache, src: ModelSource, directory: Path, result: FetchResult, transient: bool = False
) -> CacheEntry:
    return cache.promote(
        src,
        directory,
        sha256=result.sha256,
        size=result.size,
        etag=result.etag,
        last_modified=result.last_modified,
        transient=transient,
        commit=result.commit,
        git_sha1=result.git_sha1,
    )


def _tier(opts: EnsureOptions) -> RemoteTier | None:
    remote = opts.remote or env_remote()
    if not remote:
        return None
    from .fetch.tier import RemoteTier

    if isinstance(remote, RemoteTier):
        return remote
    return RemoteTier(remote, opts.remote_endpoint)


def _upload_to_tier(
    tier: RemoteTier,
    src: ModelSource,
    entry: CacheEntry,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
) -> None:
    from . import fleet

    try:
        uploaded = fleet.publish_entry(tier, src, entry, opts)
    except Exception as exc:  # the local entry is good; the tier is an optimisation
        emitter.emit("warning", message=f"could not copy to the shared tier ({exc})")
        return
    if uploaded:
        emitter.emit("tier_upload", entry.size, entry.size)


def _ensure_transient(
    cache: Cache, src: ModelSource, opts: EnsureOptions, emitter: ProgressEmitter, pins: Pins | None
) -> CacheEntry:
    cache.prepare()
    directory = cache.new_transient_dir(src)
    cache.make_entry_dir(directory, src.file_name)
    try:
        with cache.lock(directory).hold(cancel=opts.cancel):
            result = _fetch(src, directory, opts, emitter, None, pins)
            entry = _promote(cache, src, directory, result, transient=True)
    except BaseException:
        import shutil

        shutil.rmtree(directory, ignore_errors=True)  # a random-named dir can't be resumed
        raise
    emitter.emit("done", entry.size, entry.size)
    return replace(entry, via="origin")


def offline_for(src: ModelSource) -> bool:
    """MODELFETCH_OFFLINE makes every call cache-only; HF_HUB_OFFLINE does so for hf://."""
    return env_offline(hub=isinstance(src, HubFile | HubTag))


def _miss_message(src: ModelSource) -> str:
    why = "offline mode is on" if offline_for(src) else "the cache-only policy forbids it"
    return (
        f"{src.display} is not in the cache (or failed verification) and {why}; "
        "fetch it while online first"
    )


async def ensure_async(
    source: ModelSource | str | os.PathLike[str],
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> CacheEntry:
    """``ensure`` in a worker thread; cancelling the task fires the cancel token."""
    return await in_worker_thread(
        functools.partial(ensure, source), merge_options(options, overrides)
    )


async def in_worker_thread(call: Callable[[EnsureOptions], T], opts: EnsureOptions) -> T:
    """Await ``call(opts)`` run in a worker thread. asyncio cannot stop a thread, so
    cancelling the awaiting task fires the options' cancel token (one is added if there is
    none): the work then stops within a moment, keeping its part for a resume."""
    import asyncio

    if opts.cancel is None:
        opts = opts.merged(cancel=CancelToken())
    token = opts.cancel
    assert token is not None
    loop = asyncio.get_running_loop()
    future = loop.run_in_executor(None, call, opts)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        token.cancel()
        raise
