"""A Hugging Face repository at one commit: which commit a revision names, and its files.

* ``list_tree_pages``: ``GET /api/models/{repo}/tree/{rev}?recursive=true``, paginated with
  ``Link: <...>; rel="next"``. Each file item carries its git blob id (``oid``), its size,
  and for LFS files ``lfs: {oid: <sha256>, size}``: what every downloaded file is checked
  against.
* A tree listing never changes for a commit, so it is kept per commit, in huggingface_hub's
  own ``trees/<commit>.json`` format (``format_version`` 1), both under modelfetch's root
  and, when asked, in the Hugging Face cache: a repeat or offline run needs no API call.

Everything the hub sends is hostile input: paths are validated like ``hf://`` paths (no
traversal, no control characters), hashes must be hex of the right length, sizes bounded.
These functions make one attempt each; callers wrap them in the retry loop.
"""

from __future__ import annotations

import hashlib
import json
import re
import urllib.parse
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cache.layout import REFS, TREES, Layout
from .core.sidecar import MAX_SIZE
from .errors import DownloadError, InvalidSourceError, storage_error
from .fsutil import atomic_write_bytes, read_regular_file
from .source import ModelSource

TREE_FORMAT_VERSION = 1  # huggingface_hub's _tree_cache.TREE_CACHE_FORMAT_VERSION
MAX_PAGES = 200
MAX_TREE_FILE_BYTES = 64 * 1024 * 1024
MAX_FILES = 100_000
COMMIT = re.compile(r"^[0-9a-f]{40}$")
_SHA1 = COMMIT
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository at a commit, as the tree API describes it."""

    path: str
    size: int
    blob_id: str  # git blob sha1 (of the LFS pointer, for LFS files)
    lfs_sha256: str | None = None
    lfs_size: int | None = None
    xet_hash: str | None = None

    @property
    def is_lfs(self) -> bool:
        return self.lfs_sha256 is not None

    @property
    def hf_blob_name(self) -> str:
        """The file's name under ``blobs/`` in the Hugging Face cache (its ETag there)."""
        return self.lfs_sha256 or self.blob_id

    def to_tree_json(self) -> dict[str, Any]:
        info: dict[str, Any] = {"size": self.size, "blob_id": self.blob_id}
        if self.lfs_sha256 is not None:
            info["lfs_sha256"] = self.lfs_sha256
            info["lfs_size"] = self.lfs_size
        if self.xet_hash is not None:
            info["xet_hash"] = self.xet_hash
        return info


def _size(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= MAX_SIZE:
        return value
    return None


def valid_repo_path(path: object) -> str | None:
    """A repo path that is safe to use below a directory, or None."""
    if not isinstance(path, str):
        return None
    try:
        ModelSource.huggingface("o/r", path)  # the same rules as an hf:// file path
    except InvalidSourceError:
        return None
    return path


def _make_file(
    path: object,
    size: object,
    blob_id: object,
    lfs_sha256: object = None,
    lfs_size: object = None,
    xet_hash: object = None,
) -> RepoFile | None:
    """A RepoFile from untrusted values, or None if any of them is malformed."""
    clean_path, clean_size = valid_repo_path(path), _size(size)
    if clean_path is None or clean_size is None:
        return None
    if not isinstance(blob_id, str) or not _SHA1.match(blob_id):
        return None
    sha: str | None = None
    lsize: int | None = None
    if lfs_sha256 is not None:
        lsize = _size(lfs_size)
        if not isinstance(lfs_sha256, str) or not _SHA256.match(lfs_sha256) or lsize is None:
            return None
        if lsize != clean_size:
            return None  # the hub reports an LFS file's real size in both places
        sha = lfs_sha256
    xet = xet_hash if isinstance(xet_hash, str) and _SHA256.match(xet_hash) else None
    return RepoFile(clean_path, clean_size, blob_id, sha, lsize, xet)


def parse_tree_items(items: object) -> list[RepoFile]:
    """Files of one page of the tree API; a malformed file item fails the whole listing."""
    if not isinstance(items, list):
        raise DownloadError("the hub sent a file list that is not a JSON list")
    files = []
    for item in items:
        if not isinstance(item, dict) or item.get("type") != "file":
            continue  # directories, and anything newer we do not know
        lfs = item.get("lfs")
        lfs_doc = lfs if isinstance(lfs, dict) else {}
        made = _make_file(
            item.get("path"),
            item.get("size"),
            item.get("oid"),
            lfs_doc.get("oid") if lfs is not None else None,
            lfs_doc.get("size"),
            item.get("xetHash"),
        )
        if made is None:
            shown = str(item.get("path"))[:200]
            raise DownloadError(f"the hub sent an unusable file entry for {shown!r}")
        files.append(made)
    return files


# -- the trees/<commit>.json format --------------------------------------------------------
def tree_json(files: Iterable[RepoFile]) -> bytes:
    """huggingface_hub's tree cache file: ``{"format_version": 1, "files": {path: {...}}}``."""
    by_path = {f.path: f.to_tree_json() for f in files}
    doc = {"format_version": TREE_FORMAT_VERSION, "files": dict(sorted(by_path.items()))}
    return json.dumps(doc, indent=1).encode("utf-8")


def parse_tree_json(data: bytes) -> list[RepoFile] | None:
    """Read a tree cache file; None for anything unreadable, unknown or malformed."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("format_version") != TREE_FORMAT_VERSION:
        return None
    entries = doc.get("files")
    if not isinstance(entries, dict) or len(entries) > MAX_FILES:
        return None
    files = []
    for path, info in entries.items():
        if not isinstance(info, dict):
            return None
        made = _make_file(
            path,
            info.get("size"),
            info.get("blob_id"),
            info.get("lfs_sha256"),
            info.get("lfs_size"),
            info.get("xet_hash"),
        )
        if made is None:
            return None
        files.append(made)
    return files


def read_tree_file(path: Path) -> list[RepoFile] | None:
    try:
        return parse_tree_json(read_regular_file(path, MAX_TREE_FILE_BYTES))
    except OSError:
        return None


def write_tree_file(path: Path, files: Iterable[RepoFile]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, tree_json(files))


def repo_dir_name(repo_id: str) -> str:
    """``owner--repo``: one directory name per repo (ids never contain '--')."""
    return repo_id.replace("/", "--")


def cached_tree_path(layout: Layout, repo_id: str, commit: str) -> Path:
    """Where modelfetch keeps a commit's tree listing under its own cache root."""
    return layout.path(TREES) / repo_dir_name(repo_id) / f"{commit}.json"


# -- the hub API (GETs: fetch/hub.get_json) ------------------------------------------------
def tree_url(endpoint: str, repo_id: str, revision: str) -> str:
    rev = urllib.parse.quote(revision, safe="")
    return f"{endpoint}/api/models/{repo_id}/tree/{rev}?recursive=true"


def next_link(header: str | None, current: str) -> str | None:
    """The ``rel="next"`` target of a Link header, made absolute; None at the last page."""
    if not header:
        return None
    for part in header.split(","):
        m = re.match(r'\s*<([^>]+)>\s*;\s*rel="?next"?', part)
        if m:
            target = urllib.parse.urljoin(current, m.group(1))
            return target if target.startswith(("http://", "https://")) else None
    return None


def follow_pages(
    first_url: str,
    fetch_page: Callable[[str], tuple[Any, str | None]],
    repo_id: str,
) -> Iterator[Any]:
    """The JSON of each page from ``first_url`` on; ``fetch_page(url)`` returns (json, link)."""
    url: str | None = first_url
    seen: set[str] = set()
    for _page in range(MAX_PAGES):
        if url is None:
            return
        if url in seen:
            raise DownloadError(f"the file list of {repo_id} loops back on itself")
        seen.add(url)
        items, link = fetch_page(url)
        yield items
        url = next_link(link, url)
    raise DownloadError(f"the file list of {repo_id} has more than {MAX_PAGES} pages")


def list_tree_pages(
    first_url: str,
    fetch_page: Callable[[str], tuple[Any, str | None]],
    repo_id: str,
) -> list[RepoFile]:
    """Every file of a (recursive) tree listing, across its pages."""
    files: dict[str, RepoFile] = {}
    for items in follow_pages(first_url, fetch_page, repo_id):
        for f in parse_tree_items(items):
            if files.setdefault(f.path, f) != f:
                raise DownloadError(f"the hub lists {f.path!r} twice, differently")
        if len(files) > MAX_FILES:
            raise DownloadError(f"{repo_id} has more than {MAX_FILES} files")
    return list(files.values())


# -- remembered resolutions (<root>/refs/<sha256 of identity>.json) --------------------------
MAX_REF_BYTES = 64 * 1024


def _ref_file(layout: Layout, identity: str) -> Path:
    return layout.path(REFS) / f"{hashlib.sha256(identity.encode('utf-8')).hexdigest()}.json"


def recall(layout: Layout, identity: str) -> dict[str, Any] | None:
    """What was remembered for ``identity`` (a tag's file, a revision's commit), or None;
    read as hostile input like any sidecar."""
    if not layout.has(REFS):
        return None
    try:
        doc = json.loads(read_regular_file(_ref_file(layout, identity), MAX_REF_BYTES))
    except (OSError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict) or doc.get("identity") != identity:
        return None
    return doc


def remember(layout: Layout, identity: str, **values: str) -> None:
    layout.create(REFS)
    doc = {"identity": identity, **values}
    path = _ref_file(layout, identity)
    try:
        atomic_write_bytes(path, json.dumps(doc).encode("utf-8"))
    except OSError as exc:
        raise storage_error(exc, path, root=layout.root) from None
