"""``hf://owner/repo:Q4_K_M``: pick a GGUF file of a repo by its quantisation tag.

The revision is first resolved to a commit (``/api/models/{repo}/revision/{rev}``), then
the repo's file list comes from the hub's tree API at that commit
(``/api/models/{repo}/tree/{commit}``, paginated with ``Link: rel="next"``), and the chosen
file is downloaded from that same commit. A file matches when the tag appears in its name
between separators (case-insensitive); multimodal projectors (``mmproj``) are skipped; a
single file is preferred to a split set (whose first shard then stands for the set).

The choice is remembered in ``<root>/refs/<key>.json`` (reached through layout.py, never
through a link), so a cached model named by tag is served with no request at all, and works
offline.
"""

from __future__ import annotations

import re

from .cache.layout import Layout
from .errors import CacheMissError, DownloadError, InvalidSourceError
from .hubtree import follow_pages, recall, remember, tree_url
from .options import EnsureOptions, hf_endpoint
from .source import HubFile, HubTag

_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)


def choose_file(paths: list[str], quant: str) -> str | None:
    """The repo file that best matches ``quant``, or None."""
    tag = re.compile(rf"(^|[-._/]){re.escape(quant)}($|[-._/])", re.IGNORECASE)
    candidates = []
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if not name.lower().endswith(".gguf") or "mmproj" in name.lower():
            continue
        if not tag.search(path[: -len(".gguf")]):
            continue
        shard = _SHARD.search(name)
        if shard and int(shard.group(1)) != 1:
            continue  # a split set is represented by its first shard
        candidates.append((1 if shard else 0, len(path), path))
    return min(candidates)[2] if candidates else None


def _quants_in(paths: list[str]) -> list[str]:
    found = set()
    for path in paths:
        name = path.rsplit("/", 1)[-1]
        if name.lower().endswith(".gguf") and "mmproj" not in name.lower():
            m = re.search(r"(?i)(I?Q\d[A-Z0-9_]*|F16|BF16|F32)", name)
            if m:
                found.add(m.group(1).upper())
    return sorted(found)


def list_repo_files(
    source: HubTag, opts: EnsureOptions, creds: dict[str, str], commit: str
) -> list[str]:
    """Every file path of the repo at ``commit`` (an immutable listing, however paged)."""
    from .fetch.hub import get_json  # the network stack: only when the hub is asked

    url = tree_url(hf_endpoint(opts.hf_endpoint), source.repo_id, commit)
    paths: list[str] = []
    for items in follow_pages(
        url,
        lambda page: get_json(
            page, creds, opts.connect_timeout, opts.read_timeout, cancel=opts.cancel
        ),
        source.repo_id,
    ):
        if not isinstance(items, list):
            raise DownloadError(f"the hub sent an unexpected file list for {source.repo_id}")
        for item in items:  # only names matter here: a file we cannot fetch is never chosen
            if isinstance(item, dict) and item.get("type") == "file":
                path = item.get("path")
                if isinstance(path, str) and 0 < len(path) <= 1024:
                    paths.append(path)
    return paths


def read_ref(layout: Layout, source: HubTag) -> HubFile | None:
    """The remembered resolution of a tag, treated as hostile input like any sidecar."""
    doc = recall(layout, source.identity)
    if doc is None:
        return None
    try:
        return source.file(str(doc.get("path")))
    except InvalidSourceError:
        return None


def resolve(
    source: HubTag,
    opts: EnsureOptions,
    layout: Layout,
    creds: dict[str, str],
    offline: bool,
    pins: dict[tuple[str, str], str],
) -> HubFile:
    """Turn ``hf://owner/repo:QUANT`` into the concrete file source; when the hub was asked,
    record in ``pins`` the commit the listing came from, for the download to use."""
    remembered = read_ref(layout, source)
    if remembered is not None and (offline or opts.policy.value != "refresh"):
        return remembered
    if offline:
        raise CacheMissError(
            f"{source.display} was never resolved to a file on this machine and offline mode "
            "is on (or the policy is cache-only); resolve it once while online"
        )
    from .fetch.hub import resolve_commit

    endpoint = hf_endpoint(opts.hf_endpoint)
    commit = resolve_commit(
        endpoint,
        source.repo_id,
        source.revision,
        creds,
        opts.connect_timeout,
        opts.read_timeout,
        cancel=opts.cancel,
    )
    paths = list_repo_files(source, opts, creds, commit)
    chosen = choose_file(paths, source.quant)
    if chosen is None:
        available = ", ".join(_quants_in(paths)) or "none"
        raise InvalidSourceError(
            f"{source.repo_id} has no GGUF file tagged {source.quant}; tags found: {available}"
        )
    resolved = source.file(chosen)
    pins[(source.repo_id, source.revision)] = commit
    remember(layout, source.identity, path=chosen)
    return resolved
