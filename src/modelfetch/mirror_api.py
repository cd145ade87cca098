"""The hub API routes ``modelfetch serve`` answers, so whole-repository clients work through it.

``huggingface_hub.snapshot_download`` and ``hf download`` first ask
``/api/models/{repo}/revision/{rev}`` which commit a revision is (``sha``), then list the
tree at that commit (``/api/models/{repo}/tree/{commit}?recursive=true``, paginated with
``Link: <...>; rel="next"``), then fetch each file from the resolve route at the commit.

* Revisions are asked of the upstream hub each time (a branch moves), falling back to the
  one remembered when the upstream cannot be reached; an ``--offline`` mirror answers from
  what it remembers only. Commits are answered without asking anyone.
* Tree listings are pulled through once per commit and kept (``trees/``), like
  ``modelfetch get hf://owner/repo --all`` does: both share them.
* Xet is stripped: no ``xetHash`` in listings (the resolve route never sends Xet headers),
  so clients download over plain HTTP from the mirror instead of going around it.
"""

from __future__ import annotations

import hashlib
import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from .cache import Cache
from .errors import DownloadError, InvalidSourceError, ModelFetchError
from .fetch.hub import HubApiError
from .hfcache import HubCacheRepo, hub_cache_setting
from .hubtree import RepoFile
from .options import CachePolicy, EnsureOptions
from .progress import ProgressEmitter
from .snapshot import load_tree, resolve_commit
from .source import RepoRef

PAGE_SIZE = 1000  # what the hub uses for tree listings
_LFS_POINTER_FIXED = len("version https://git-lfs.github.com/spec/v1\noid sha256:\nsize \n") + 64


@dataclass
class ApiReply:
    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> ApiReply:
    return ApiReply(
        status, json.dumps(doc).encode(), {"Content-Type": "application/json", **(headers or {})}
    )


def _error(status: int, message: str, code: str | None = None) -> ApiReply:
    # X-Error-Message is a header: one line of plain ASCII.
    line = message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")
    reply = _json({"error": message}, status, {"X-Error-Message": line[:500]})
    if code:
        reply.headers["X-Error-Code"] = code
    return reply


def _tree_item(f: RepoFile) -> dict[str, Any]:
    item: dict[str, Any] = {"type": "file", "oid": f.blob_id, "size": f.size, "path": f.path}
    if f.lfs_sha256 is not None:
        pointer = _LFS_POINTER_FIXED + len(str(f.size))
        item["lfs"] = {"oid": f.lfs_sha256, "size": f.size, "pointerSize": pointer}
    return item  # never xetHash: the mirror is plain HTTP


def _folder_item(commit: str, path: str) -> dict[str, Any]:
    oid = hashlib.sha1(f"{commit}:{path}".encode(), usedforsecurity=False).hexdigest()
    return {"type": "directory", "oid": oid, "size": 0, "path": path}


def tree_items(
    commit: str, files: list[RepoFile], folder: str, recursive: bool
) -> list[dict[str, Any]] | None:
    """The listing of ``folder`` (``""``: the root) as the hub gives it; None if absent."""
    prefix = folder + "/" if folder else ""
    below = [f for f in files if f.path.startswith(prefix)]
    if folder and not below:
        return None
    folders: set[str] = set()
    items = []
    for f in sorted(below, key=lambda f: f.path):
        parts = f.path[len(prefix) :].split("/")
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folders.add(prefix + "/".join(parts[:depth]))
        if recursive or len(parts) == 1:
            items.append(_tree_item(f))
    return [_folder_item(commit, d) for d in sorted(folders)] + items


class MirrorApi:
    def __init__(self, cache: Cache, options: EnsureOptions, offline: bool, page_size: int):
        self.cache = cache
        self.options = options
        self.offline = offline
        self.page_size = page_size

    def handle(self, path: str, query: str, host: str | None) -> ApiReply:
        """Answer ``/api/models/...`` (path already split from its query string)."""
        parts = [urllib.parse.unquote(p) for p in path.split("/")[3:]]
        try:
            if len(parts) == 2:
                return self._model_info(RepoRef(f"{parts[0]}/{parts[1]}"))
            if len(parts) == 4 and parts[2] == "revision":
                return self._model_info(RepoRef(f"{parts[0]}/{parts[1]}", parts[3]))
            if len(parts) >= 4 and parts[2] == "tree":
                ref = RepoRef(f"{parts[0]}/{parts[1]}", parts[3])
                return self._tree(ref, "/".join(parts[4:]).strip("/"), query, path, host)
        except InvalidSourceError as exc:
            return _error(400, str(exc))
        except HubApiError as exc:
            return _error(exc.status or 502, f"upstream: {exc}", exc.error_code)
        except DownloadError as exc:
            code = exc.status if exc.status in (401, 403, 404) else 502
            return _error(code, f"upstream: {exc}")
        except ModelFetchError as exc:  # a miss while offline, a bad listing upstream
            return _error(404 if self.offline else 502, str(exc))
        return _error(404, "unknown API route")

    def _commit_and_tree(self, ref: RepoRef) -> tuple[str, list[RepoFile]]:
        root = self.cache.layout
        emitter = ProgressEmitter(None, ref.display)
        setting = hub_cache_setting(self.options.hf_cache)
        hub = HubCacheRepo(setting.root, ref.repo_id) if setting.root is not None else None
        if self.offline:
            commit = resolve_commit(ref, self.options, root, True, emitter, hub)
        else:
            try:  # a branch may have moved: ask the upstream every time
                asking = self.options.merged(policy=CachePolicy.REFRESH)
                commit = resolve_commit(ref, asking, root, False, emitter, hub)
            except HubApiError:
                raise  # the upstream says no: say so, do not serve a stale answer
            except DownloadError:
                commit = resolve_commit(ref, self.options, root, True, emitter, hub)
        tree = load_tree(ref, commit, self.options, root, self.offline, emitter, hub)
        return commit, tree

    def _model_info(self, ref: RepoRef) -> ApiReply:
        commit, tree = self._commit_and_tree(ref)
        owner = ref.repo_id.split("/", 1)[0]
        doc = {
            "_id": hashlib.sha1(ref.repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": ref.repo_id,
            "modelId": ref.repo_id,
            "author": owner,
            "sha": commit,
            "private": False,
            "disabled": False,
            "gated": False,
            "tags": [],
            "siblings": [{"rfilename": f.path} for f in sorted(tree, key=lambda f: f.path)],
        }
        return _json(doc, headers={"X-Repo-Commit": commit})

    def _tree(self, ref: RepoRef, folder: str, query: str, path: str, host: str | None) -> ApiReply:
        args = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
        commit, tree = self._commit_and_tree(ref)
        items = tree_items(commit, tree, folder, args.get("recursive", "").lower() == "true")
        if items is None:
            return _error(404, f"{folder} does not exist at {commit}", "EntryNotFound")
        cursor = args.get("cursor", "0")
        if not cursor.isdigit() or len(cursor) > 9:
            return _error(400, "invalid cursor")
        start = int(cursor)
        reply = _json(items[start : start + self.page_size])
        if start + self.page_size < len(items) and host:
            args["cursor"] = str(start + self.page_size)
            target = f"http://{host}{path}?{urllib.parse.urlencode(args)}"
            reply.headers["Link"] = f'<{target}>; rel="next"'
        return reply
