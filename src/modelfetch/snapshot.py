"""Whole repositories: ``modelfetch.snapshot("hf://owner/repo[@revision]")``.

1. The revision is resolved to a commit once (``/api/models/{repo}/revision/{rev}``) and
   remembered under ``refs/``; every file is then fetched at ``/resolve/<commit>/...``, so
   a branch that moves meanwhile changes nothing. A 40-hex revision needs no call.
2. The tree at that commit is listed (recursive, paginated) once and kept per commit
   (``trees/``); a repeat or offline run makes no API call. The selection is fnmatch on
   repo paths, like huggingface_hub's ``allow_patterns``/``ignore_patterns``.
3. Each selected file is an ordinary cache entry (``hf:<repo>@<commit>/<path>``), fetched by
   ``ensure`` with what the tree says pinned: an LFS file's SHA-256 (also checked against
   the hub's ``X-Linked-Etag``), a git-stored file's blob id and so its size. Files run in
   a bounded pool, smallest first, so small files never queue behind large ones; large
   files still use the segmented engine, and every connection beyond a file's first comes
   from one budget shared by the whole batch.
4. Only when every file is there: split sets (``model.safetensors.index.json``, GGUF
   ``-0000k-of-0000n``) are checked against the files present, the snapshot directory is
   published (snapdir.py) and, when asked, the Hugging Face cache (hfcache.py). A failure
   publishes nothing; a rerun fetches only what is missing.
"""

from __future__ import annotations

import fnmatch
import functools
import json
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .budget import ConnectionBudget
from .cache import Cache, CacheEntry, VerifyResult
from .cache.layout import REFS, TREES, Layout
from .cache.sets import SHARD
from .cache.sidecar import read_metadata
from .cache.snapdir import iter_snapshots, read_links
from .cache.snapdir import list_snapshots as snapdir_list
from .cache.snapdir import publish as publish_snapshot_dir
from .cache.snapdir import remove as remove_snapshot_dir
from .cancel import CancelToken
from .core.sidecar import FileStamp, MetadataError
from .ensure import ensure_file, in_worker_thread, merge_options, offline_for
from .errors import (
    CacheMissError,
    CacheStorageError,
    CancelledError,
    CorruptCacheError,
    DownloadError,
    IntegrityError,
    InvalidSourceError,
    ModelFetchError,
)
from .fetch.base import credentials_for
from .fsutil import content_digests, hardlink_or_copy, read_regular_file, sha256_file, unlink_quiet
from .hfcache import HubCacheRepo, hub_cache_setting
from .hubtree import (
    COMMIT,
    RepoFile,
    cached_tree_path,
    list_tree_pages,
    read_tree_file,
    recall,
    remember,
    tree_url,
    valid_repo_path,
    write_tree_file,
)
from .options import CachePolicy, EnsureOptions, hf_endpoint
from .progress import ProgressCallback, ProgressEmitter, ProgressEvent
from .source import ModelSource, RepoRef

# The download machinery (urllib3, the engine, asyncio) is imported where a download needs
# it: ``import modelfetch`` and cache hits stay cheap (see ensure.py).

MAX_INDEX_BYTES = 64 * 1024 * 1024
Patterns = str | Sequence[str] | None


@dataclass(frozen=True)
class SnapshotFile:
    path: str  # the path in the repository
    size: int
    sha256: str
    blob_id: str  # git blob id (of the LFS pointer, for an LFS file)
    lfs: bool
    local_path: Path  # the verified file in its cache entry
    status: str  # "cached", "downloaded" or "adopted" (from the Hugging Face cache)

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "size": self.size,
            "sha256": self.sha256,
            "blob_id": self.blob_id,
            "lfs": self.lfs,
            "local_path": str(self.local_path),
            "status": self.status,
        }


@dataclass(frozen=True)
class Snapshot:
    """A whole repository at a commit, verified, under ``path`` (repo paths below it)."""

    path: Path
    repo_id: str
    revision: str
    commit: str
    files: tuple[SnapshotFile, ...]
    hf_cache_path: Path | None = None  # snapshots/<commit> in the Hugging Face cache

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        counts = {s: sum(f.status == s for f in self.files) for s in ("cached", "downloaded")}
        counts["adopted"] = sum(f.status == "adopted" for f in self.files)
        return {
            "path": str(self.path),
            "repo_id": self.repo_id,
            "revision": self.revision,
            "commit": self.commit,
            "size": self.size,
            "files": [f.to_dict() for f in self.files],
            "hf_cache_path": str(self.hf_cache_path) if self.hf_cache_path else None,
            "counts": counts,
            "downloaded_bytes": sum(f.size for f in self.files if f.status == "downloaded"),
        }


# -- selection ---------------------------------------------------------------------------------
def _pattern_list(patterns: Patterns) -> list[str] | None:
    if patterns is None:
        return None
    items = [patterns] if isinstance(patterns, str) else list(patterns)
    if not all(isinstance(p, str) and p for p in items):
        raise InvalidSourceError("include/exclude patterns must be non-empty strings")
    # As huggingface_hub does: "dir/" means everything below dir.
    return [p + "*" if p.endswith("/") else p for p in items]


def select(files: Sequence[RepoFile], include: Patterns, exclude: Patterns) -> list[RepoFile]:
    """The files whose repo path matches an ``include`` pattern (all, if None) and no
    ``exclude`` pattern; fnmatch, case-sensitive, ``*`` crossing '/'."""
    allow, deny = _pattern_list(include), _pattern_list(exclude)
    return [
        f
        for f in files
        if (allow is None or any(fnmatch.fnmatchcase(f.path, p) for p in allow))
        and not (deny and any(fnmatch.fnmatchcase(f.path, p) for p in deny))
    ]


def _as_hub_source(ref: RepoRef) -> ModelSource:
    """Any file of the repo: what credentials and offline switches are decided by."""
    return ref.file("config.json")


# -- the revision and the tree ----------------------------------------------------------------
def _revision_identity(ref: RepoRef) -> str:
    return f"hfrev:{ref.repo_id}@{ref.revision}"


def _api(
    url: str, creds: dict[str, str], opts: EnsureOptions, emitter: ProgressEmitter
) -> tuple[Any, str | None]:
    """One hub API GET, with the same retries and back-off as a download."""
    from .fetch.http import retrying
    from .fetch.hub import get_json
    from .redact import redact_url

    return retrying(
        opts,
        emitter,
        redact_url(url),
        lambda: get_json(url, creds, opts.connect_timeout, opts.read_timeout, opts.cancel),
    )


def resolve_commit(
    ref: RepoRef,
    opts: EnsureOptions,
    layout: Layout,
    offline: bool,
    emitter: ProgressEmitter,
    hub_repo: HubCacheRepo | None,
) -> str:
    """The commit ``ref.revision`` names: a commit as is; remembered (no request) unless
    refreshing; offline also from the Hugging Face cache's refs; else asked once."""
    if COMMIT.match(ref.revision):
        return ref.revision
    remembered = recall(layout, _revision_identity(ref))
    commit = remembered.get("commit") if remembered else None
    fresh_wanted = opts.policy is CachePolicy.REFRESH and not offline
    if isinstance(commit, str) and COMMIT.match(commit) and not fresh_wanted:
        return commit
    if offline:
        from_hf = hub_repo.read_ref(ref.revision) if hub_repo is not None else None
        if from_hf is not None:
            return from_hf
        raise CacheMissError(
            f"{ref.display} was never resolved to a commit on this machine and offline mode "
            "is on (or the policy is cache-only); fetch it once while online"
        )
    from .fetch.http import retrying
    from .fetch.hub import resolve_commit as hub_resolve_commit
    from .redact import redact_url

    endpoint = hf_endpoint(opts.hf_endpoint)
    creds = credentials_for(_as_hub_source(ref), opts)
    commit = retrying(  # the download's retry rules
        opts,
        emitter,
        redact_url(endpoint),
        lambda: hub_resolve_commit(
            endpoint,
            ref.repo_id,
            ref.revision,
            creds,
            opts.connect_timeout,
            opts.read_timeout,
            cancel=opts.cancel,
        ),
    )
    remember(layout, _revision_identity(ref), commit=commit)
    return commit


def load_tree(
    ref: RepoRef,
    commit: str,
    opts: EnsureOptions,
    layout: Layout,
    offline: bool,
    emitter: ProgressEmitter,
    hub_repo: HubCacheRepo | None,
) -> list[RepoFile]:
    """Every file of the repo at ``commit``: from modelfetch's tree cache, else the Hugging
    Face cache's, else the tree API (then kept, as trees never change for a commit)."""
    mine = cached_tree_path(layout, ref.repo_id, commit)
    tree = read_tree_file(mine)
    if tree is not None:
        return tree
    if hub_repo is not None:
        tree = hub_repo.read_tree(commit)
    if tree is None and offline:
        raise CacheMissError(
            f"the file list of {ref.repo_id} at {commit[:12]} is not cached and offline mode "
            "is on (or the policy is cache-only); fetch it once while online"
        )
    if tree is None:
        creds = credentials_for(_as_hub_source(ref), opts)
        tree = list_tree_pages(
            tree_url(hf_endpoint(opts.hf_endpoint), ref.repo_id, commit),
            lambda url: _api(url, creds, opts, emitter),
            ref.repo_id,
        )
    try:
        layout.create(TREES)
        write_tree_file(mine, tree)
    except (OSError, CacheStorageError):
        pass  # only a saved request: a read-only cache still works from the hub's answer
    return tree


# -- progress over many files -------------------------------------------------------------
class _Progress:
    """Turns the per-file events of a batch into one stream: aggregate bytes and files
    (throttled), plus each file's retries and warnings (with its path)."""

    FORWARD = ("retry", "restart", "waiting", "warning", "tier_hit", "not_modified")

    def __init__(self, callback: ProgressCallback | None, display: str, files: list[RepoFile]):
        self.callback = callback
        self.display = display
        self.total = sum(f.size for f in files)
        self.count = len(files)
        self.size = {f.path: f.size for f in files}
        self.done: dict[str, int] = {}
        self.finished: dict[str, str] = {}  # path -> how: cached, downloaded, adopted
        self.adopted: set[str] = set()
        self.lock = threading.Lock()
        self.last = 0.0

    def emit(self, kind: Any, message: str = "", force: bool = True) -> None:
        if self.callback is None:
            return
        with self.lock:
            now = time.monotonic()
            if not force and now - self.last < 0.1:
                return
            self.last = now
            event = ProgressEvent(
                kind,
                self.display,
                sum(self.done.values()),
                self.total,
                message,
                len(self.finished),
                self.count,
            )
        self.callback(event)

    def for_file(self, path: str) -> ProgressCallback:
        def on_event(event: ProgressEvent) -> None:
            terminal = event.kind in ("cache_hit", "done")
            with self.lock:
                if event.kind in ("start", "progress"):
                    self.done[path] = min(event.bytes_done, self.size[path])
                elif event.kind == "adopted":
                    self.adopted.add(path)
                elif terminal and path not in self.finished:
                    self.done[path] = self.size[path]
                    how = "cached" if event.kind == "cache_hit" else "downloaded"
                    self.finished[path] = "adopted" if path in self.adopted else how
            if event.kind in self.FORWARD:
                self.emit(event.kind, f"{path}: {event.message or event.kind}")
            else:
                self.emit("progress", force=terminal)

        return on_event


# -- fetching the files ------------------------------------------------------------------------
def _file_options(opts: EnsureOptions, f: RepoFile, progress: _Progress) -> EnsureOptions:
    return opts.merged(
        sha256=f.lfs_sha256,
        git_sha1=None if f.is_lfs else f.blob_id,
        shards=False,  # the selection decides which shards come, not the first shard
        policy=CachePolicy.PREFER_CACHED if opts.policy is CachePolicy.REFRESH else opts.policy,
        progress=progress.for_file(f.path),
    )


class _SameContent:
    """Entries of other commits by SHA-256, so a file a new commit did not change is linked
    from the entry that has it instead of downloaded again (read once, when first needed)."""

    def __init__(self, cache: Cache) -> None:
        self.cache = cache
        self.lock = threading.Lock()
        self.by_sha: dict[str, list[CacheEntry]] | None = None

    def donor(self, sha256: str, directory: Path) -> CacheEntry | None:
        with self.lock:
            if self.by_sha is None:
                self.by_sha = {}
                for entry in self.cache.list():
                    if not entry.transient:
                        self.by_sha.setdefault(entry.sha256, []).append(entry)
            found = [e for e in self.by_sha.get(sha256, []) if e.directory != directory]
        return found[0] if found else None


def _stamped(entry: CacheEntry) -> os.stat_result | None:
    """The entry's file, if its stat still matches the stamp of its last full hash."""
    try:
        meta = read_metadata(entry.directory)
        st = os.lstat(entry.path)
    except (MetadataError, OSError):
        return None
    if meta.stamp is None or meta.stamp != FileStamp.of(st) or meta.sha256 != entry.sha256:
        return None
    return st


def _reuse(
    cache: Cache, src: ModelSource, f: RepoFile, commit: str, donors: _SameContent, o: EnsureOptions
) -> CacheEntry | None:
    """Link an LFS file from another commit's entry with the same SHA-256, if there is one
    that is provably intact; None: let ``ensure`` find or fetch it."""
    from .cache.part import part_paths

    sha = f.lfs_sha256
    directory = cache.entry_dir(src)
    if sha is None or cache.lookup_fast(src, sha) is not None:
        return None
    donor = donors.donor(sha, directory)
    st = _stamped(donor) if donor is not None else None
    if donor is None or st is None or st.st_size != f.size:
        return None
    cache.prepare()
    with cache.lock(directory).hold(cancel=o.cancel, timeout=o.lock_timeout):
        if cache.lookup_verified(src, sha) is not None:
            return None  # someone else got it meanwhile: an ordinary hit
        directory.mkdir(exist_ok=True)
        part, _ = part_paths(directory, src.file_name)
        try:
            unlink_quiet(part)
            linked = hardlink_or_copy(donor.path, part)
            now = os.lstat(part)
            same = (now.st_ino, now.st_size, now.st_mtime_ns) == (
                st.st_ino,
                st.st_size,
                st.st_mtime_ns,
            )
            intact = same if linked else sha256_file(part)[0] == sha
        except OSError:
            intact = False  # then ensure() downloads it
        if not intact:
            unlink_quiet(part)
            return None
        entry = cache.promote(
            src, directory, sha256=sha, size=f.size, etag=None, last_modified=None, commit=commit
        )
    if linked:
        cache.restamp_linked(donor)
    if o.progress is not None:
        o.progress(ProgressEvent("adopted", src.display, f.size, f.size, "same content"))
        o.progress(ProgressEvent("done", src.display, f.size, f.size))
    return entry


def _fetch_all(
    ref: RepoRef, commit: str, files: list[RepoFile], opts: EnsureOptions, progress: _Progress
) -> dict[str, CacheEntry]:
    """Every file as a verified entry; raises (after the others finished) if any failed."""
    import concurrent.futures

    cache = Cache(opts.cache_dir)
    donors = _SameContent(cache)

    def fetch_one(f: RepoFile, o: EnsureOptions) -> CacheEntry:
        src = ref.file(f.path, commit)
        return _reuse(cache, src, f, commit, donors, o) or ensure_file(src, o)

    token = opts.cancel or CancelToken()
    workers = min(opts.parallel_files, max(1, len(files)))
    budget = opts.connection_budget or ConnectionBudget(max(0, opts.max_connections - workers))
    shared = opts.merged(cancel=token, connection_budget=budget)
    entries: dict[str, CacheEntry] = {}
    failures: list[tuple[str, BaseException]] = []
    ordered = sorted(files, key=lambda f: (f.size, f.path))  # small files never wait
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="modelfetch-file")
    try:
        futures = {
            pool.submit(fetch_one, f, _file_options(shared, f, progress)): f for f in ordered
        }
        pending = set(futures)
        while pending:  # bounded by the downloads, which have their own limits
            done, pending = concurrent.futures.wait(pending, timeout=0.25)
            for fut in done:
                f = futures[fut]
                try:
                    entries[f.path] = fut.result()
                except BaseException as exc:
                    failures.append((f.path, exc))
    except BaseException:
        token.cancel()  # Ctrl-C or the caller's cancellation: stop every file promptly
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    if failures:
        raise _combined(failures, len(files))
    return entries


def _combined(failures: list[tuple[str, BaseException]], total: int) -> BaseException:
    path, first = sorted(failures, key=lambda pe: pe[0])[0]
    if isinstance(first, CancelledError):
        return first
    message = (
        f"{len(failures)} of {total} files failed (first: {path}: {first}); nothing was "
        "published; run the same command again to fetch only what is missing"
    )
    if isinstance(first, DownloadError):
        return DownloadError(message, status=first.status)
    if isinstance(first, (IntegrityError, CacheMissError, InvalidSourceError)):
        return type(first)(message)
    if isinstance(first, OSError):
        return DownloadError(message)
    if isinstance(first, ModelFetchError):
        return ModelFetchError(message)
    return first  # not ours: a bug, shown as it is


# -- checks across files -------------------------------------------------------------------
def _index_shards(entry: CacheEntry, index_path: str) -> set[str]:
    """Repo paths of the shards a ``*.safetensors.index.json`` names (hostile input)."""
    try:
        doc = json.loads(read_regular_file(entry.path, MAX_INDEX_BYTES))
    except (OSError, ValueError, RecursionError):
        raise IntegrityError(f"{index_path} is not readable JSON") from None
    weight_map = doc.get("weight_map") if isinstance(doc, dict) else None
    if not isinstance(weight_map, dict):
        raise IntegrityError(f"{index_path} has no weight_map")
    folder = index_path.rsplit("/", 1)[0] + "/" if "/" in index_path else ""
    shards = set()
    for name in set(weight_map.values()):
        path = valid_repo_path(folder + name) if isinstance(name, str) else None
        if path is None:
            raise IntegrityError(f"{index_path} names an unusable shard {str(name)[:100]!r}")
        shards.add(path)
    return shards


def check_sets(
    selected: dict[str, CacheEntry], tree: list[RepoFile], warn: Callable[[str], None]
) -> None:
    """Split models must be whole: a shard named by an index or by a GGUF split name that
    the repository lacks is an error (the model could never load); one the selection left
    out is a warning (the caller chose so)."""
    in_repo = {f.path for f in tree}
    for path, entry in sorted(selected.items()):
        name = path.rsplit("/", 1)[-1]
        folder = path[: len(path) - len(name)]
        needed: set[str] = set()
        if name.endswith(".safetensors.index.json"):
            needed = _index_shards(entry, path)
        elif (m := SHARD.match(name)) is not None:
            count = int(m.group("count"))
            if 1 <= count <= 1000:
                needed = {f"{folder}{m.group('base')}-{i:05d}-of-{count:05d}.gguf" for i in
                          range(1, count + 1)}  # fmt: skip
        absent = sorted(needed - in_repo)
        if absent:
            raise IntegrityError(
                f"{path} needs {len(absent)} file(s) the repository does not have at this "
                f"commit (first: {absent[0]}); the model could not be loaded"
            )
        left_out = sorted(needed - set(selected))
        if left_out:
            warn(f"{path} needs {len(left_out)} file(s) the selection leaves out (first: "
                 f"{left_out[0]}); loading it will fail without them")  # fmt: skip


# -- publishing --------------------------------------------------------------------------------
def _publish_hub_cache(
    hub_repo: HubCacheRepo,
    cache: Cache,
    ref: RepoRef,
    commit: str,
    tree: list[RepoFile],
    chosen: list[RepoFile],
    entries: dict[str, CacheEntry],
) -> Path:
    path = hub_repo.publish(commit, ref.revision, tree, [(f, entries[f.path].path) for f in chosen])
    for f in chosen:
        cache.restamp_linked(entries[f.path])
    return path


def snapshot(
    source: RepoRef | str,
    include: Patterns = None,
    exclude: Patterns = None,
    hf_cache: bool | str | os.PathLike[str] | None = None,
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> Snapshot:
    """Fetch a whole repository (or the files ``include``/``exclude`` select) at one commit,
    every file verified, and return the snapshot directory that holds them.

    ``hf_cache``: also publish into the Hugging Face cache (True: where huggingface_hub looks;
    a path: there). Other keywords are EnsureOptions fields (``parallel_files``,
    ``max_connections``, ``connections``, ``policy``, ``progress``, ``cancel``, ...).
    """
    if hf_cache is not None:
        overrides["hf_cache"] = hf_cache
    opts = merge_options(options, overrides)
    if opts.sha256 is not None or opts.git_sha1 is not None:
        raise InvalidSourceError("a pinned hash names one file; a snapshot has several")
    if opts.policy is CachePolicy.NO_CACHE:
        raise InvalidSourceError("a snapshot is made of cache entries: no_cache cannot apply")
    ref = source if isinstance(source, RepoRef) else RepoRef.parse(source)
    try:
        return _snapshot(ref, include, exclude, opts)
    except OSError as exc:  # the cache's own disk: unwritable, full, ...
        where = f" ({exc.filename})" if exc.filename else ""
        raise ModelFetchError(f"{ref.display}: {exc.strerror or exc}{where}") from None


def _snapshot(ref: RepoRef, include: Patterns, exclude: Patterns, opts: EnsureOptions) -> Snapshot:
    cache = Cache(opts.cache_dir)
    offline = offline_for(_as_hub_source(ref)) or opts.policy is CachePolicy.CACHE_ONLY
    if offline:
        opts = opts.merged(policy=CachePolicy.CACHE_ONLY)
    else:
        cache.prepare()
    setting = hub_cache_setting(opts.hf_cache)
    hub_repo = HubCacheRepo(setting.root, ref.repo_id) if setting.root is not None else None
    if setting.publish and setting.root is not None:
        try:  # find out now, not after downloading everything
            setting.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CorruptCacheError(
                f"the Hugging Face cache at {setting.root} cannot be used: {exc.strerror or exc}"
            ) from None
    emitter = ProgressEmitter(opts.progress, ref.display)
    commit = resolve_commit(ref, opts, cache.layout, offline, emitter, hub_repo)
    tree = load_tree(ref, commit, opts, cache.layout, offline, emitter, hub_repo)
    chosen = select(tree, include, exclude)
    if not chosen:
        raise InvalidSourceError(
            f"no file of {ref.repo_id} at {commit[:12]} matches the include/exclude patterns "
            f"({len(tree)} files in the repository)"
        )
    progress = _Progress(opts.progress, ref.display, chosen)
    progress.emit("start")
    entries = _fetch_all(ref, commit, chosen, opts, progress)
    for f in chosen:
        if entries[f.path].size != f.size:
            raise IntegrityError(f"{f.path}: {entries[f.path].size} bytes, the tree says {f.size}")
    check_sets(entries, tree, lambda text: progress.emit("warning", text))
    path = publish_snapshot_dir(
        cache.layout, ref.repo_id, commit, {p: e.path for p, e in entries.items()}
    )
    hf_path = None
    if setting.publish and hub_repo is not None:
        hf_path = _publish_hub_cache(hub_repo, cache, ref, commit, tree, chosen, entries)
    files = tuple(
        SnapshotFile(
            f.path,
            f.size,
            entries[f.path].sha256,
            f.blob_id,
            f.is_lfs,
            entries[f.path].path,
            progress.finished.get(f.path, "cached"),
        )
        for f in sorted(chosen, key=lambda f: f.path)
    )
    progress.emit("done")
    return Snapshot(path, ref.repo_id, ref.revision, commit, files, hf_path)


async def snapshot_async(
    source: RepoRef | str,
    include: Patterns = None,
    exclude: Patterns = None,
    hf_cache: bool | str | os.PathLike[str] | None = None,
    options: EnsureOptions | None = None,
    **overrides: Any,
) -> Snapshot:
    """``snapshot`` in a worker thread; cancelling the task fires the cancel token."""
    call = functools.partial(snapshot, source, include, exclude, hf_cache)
    return await in_worker_thread(call, merge_options(options, overrides))


# -- management: ls, verify, rm -------------------------------------------------------------
@dataclass(frozen=True)
class SnapshotInfo:
    repo_id: str
    commit: str
    path: Path
    files: int
    size: int
    revisions: tuple[str, ...]  # remembered revisions that resolved to this commit

    def to_dict(self) -> dict[str, Any]:
        return {
            "repo_id": self.repo_id,
            "commit": self.commit,
            "path": str(self.path),
            "files": self.files,
            "size": self.size,
            "revisions": list(self.revisions),
        }


def _revisions_by_commit(layout: Layout) -> dict[tuple[str, str], list[str]]:
    """(repo id, commit) -> revisions remembered as resolving to it (refs/*.json)."""
    out: dict[tuple[str, str], list[str]] = {}
    if not layout.has(REFS):
        return out
    refs = layout.path(REFS)
    try:
        names = sorted(os.listdir(refs))[:100_000]
    except OSError:
        return out
    for name in names:
        try:
            doc = json.loads(read_regular_file(refs / name, 64 * 1024))
        except (OSError, ValueError, RecursionError):
            continue
        identity = doc.get("identity") if isinstance(doc, dict) else None
        commit = doc.get("commit") if isinstance(doc, dict) else None
        if isinstance(identity, str) and identity.startswith("hfrev:") and isinstance(commit, str):
            repo_id, _, revision = identity[len("hfrev:") :].partition("@")
            out.setdefault((repo_id, commit), []).append(revision)
    return out


def list_snapshots(cache: Cache) -> list[SnapshotInfo]:
    """Every intact snapshot directory of the cache."""
    revisions = _revisions_by_commit(cache.layout)
    out = []
    for snap in snapdir_list(cache.root):
        size = 0
        for target in snap.files.values():
            try:
                size += os.lstat(target).st_size
            except OSError:
                pass
        out.append(
            SnapshotInfo(
                snap.repo_id,
                snap.commit,
                snap.path,
                len(snap.files),
                size,
                tuple(sorted(revisions.get((snap.repo_id, snap.commit), []))),
            )
        )
    return out


def _entry_dir_of(cache: Cache, target: Path) -> Path | None:
    """The entry directory a snapshot link points into, if it is one of ours."""
    parent = target.parent
    return parent if parent.parent == cache.entries_dir else None


def verify_snapshots(cache: Cache, only: Path | None = None) -> list[VerifyResult]:
    """Each snapshot (or ``only`` that one) end to end: every link reaches an entry of the
    cache whose verified content is what the commit's tree lists (LFS SHA-256, git blob id,
    size). Run after the entries themselves were verified (``Cache.verify``). A failing
    snapshot is removed."""
    results = []
    for repo_id, commit, path in iter_snapshots(cache.root):
        if only is not None and path != only:
            continue
        problem = _snapshot_problem(cache, repo_id, commit, path)
        if problem is not None:
            remove_snapshot_dir(path)
        results.append(VerifyResult(path, problem is None, problem or "ok"))
    return results


def _snapshot_problem(cache: Cache, repo_id: str, commit: str, path: Path) -> str | None:
    links = read_links(path)
    if links is None:
        return "a file is missing or not a link: snapshot removed"
    tree = read_tree_file(cached_tree_path(cache.layout, repo_id, commit))
    listed = {f.path: f for f in tree or []}
    for repo_path, target in sorted(links.items()):
        entry_dir = _entry_dir_of(cache, target)
        listed_file = listed.get(repo_path)
        if entry_dir is None or listed_file is None:
            return f"{repo_path} is not a cache entry of this commit: snapshot removed"
        try:
            meta = read_metadata(entry_dir)
        except MetadataError as exc:
            return f"{repo_path}: entry sidecar {exc}: snapshot removed"
        if meta.size != listed_file.size or (
            listed_file.lfs_sha256 is not None and meta.sha256 != listed_file.lfs_sha256
        ):
            return f"{repo_path} differs from the commit's file list: snapshot removed"
        if listed_file.lfs_sha256 is None and _git_blob_id(target) != listed_file.blob_id:
            return f"{repo_path} does not hash to its git blob id: snapshot removed"
    return None


def _git_blob_id(path: Path) -> str | None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    try:
        _, sha1, _ = content_digests(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    return sha1


def verify_snapshot_files(cache: Cache, path: Path) -> list[VerifyResult]:
    """Re-hash the entries a snapshot gathers, then check the snapshot itself."""
    results = []
    for target in sorted((read_links(path) or {}).values()):
        entry_dir = _entry_dir_of(cache, target)
        if entry_dir is not None:
            results += cache.verify(entry_dir.name)
    return results + verify_snapshots(cache, only=path)


def find_snapshot(cache: Cache, text: str) -> Path | None:
    """A snapshot directory named by its path (as ``get`` printed it)."""
    candidate = Path(text).expanduser()
    for _repo_id, _commit, path in iter_snapshots(cache.root):
        try:
            if candidate.resolve() == path.resolve():
                return path
        except OSError:
            continue
    return None


def remove_snapshot(cache: Cache, path: Path) -> list[CacheEntry]:
    """Remove a snapshot and the entries it gathers (entries are per commit: no other
    snapshot uses them). Entries being downloaded right now are left alone."""
    links = read_links(path) or {}
    removed = []
    for target in links.values():
        entry_dir = _entry_dir_of(cache, target)
        if entry_dir is not None:
            removed += cache.remove(entry_dir.name)
    remove_snapshot_dir(path)
    return removed
