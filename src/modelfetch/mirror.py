"""``modelfetch serve``: the cache as an HTTP mirror that Hugging Face clients can use.

Routes:

* ``GET|HEAD /{owner}/{repo}/resolve/{revision}/{path}``: the Hugging Face resolve route,
  so ``HF_ENDPOINT=http://mirror:port`` works for huggingface_hub, llama.cpp and friends.
  A miss is pulled through from the upstream hub (one download, however many clients ask
  at once: the entry lock serialises them), verified against the hub's SHA-256, and then
  served. Answers carry ``ETag``/``X-Linked-Etag`` (the SHA-256), ``X-Linked-Size`` and
  ``X-Repo-Commit``.
* ``GET|HEAD /by-key/{cache key}``: any verified entry (also plain URL sources).
* ``GET /healthz``.

Every answer supports single ``Range`` requests, ``If-Range`` and ``If-None-Match``; bodies
go out with ``sendfile(2)``. The mirror uses its own token for the upstream (HF_TOKEN of the
server process) and never forwards a client's credentials.

Why the standard library's ``ThreadingHTTPServer``: the mirror needs GET/HEAD with one
Range form, and its work is the blocking, thread-safe ``ensure()``; a thread per connection
is the natural model, and ``sendfile`` moves the bytes, not Python.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import stat
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .cache import Cache, CacheEntry
from .ensure import ensure
from .errors import CacheMissError, DownloadError, InvalidSourceError, ModelFetchError
from .options import CachePolicy, EnsureOptions
from .redact import printable
from .source import ModelSource

log = logging.getLogger("modelfetch.mirror")
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")
_KEY = re.compile(r"^[0-9a-f]{64}$")


def synthetic_commit(repo_id: str, revision: str) -> str:
    """A stable stand-in when an entry was cached without the hub's commit id: clients
    such as huggingface_hub need one to lay out their snapshot folders."""
    return hashlib.sha1(
        f"modelfetch:{repo_id}@{revision}".encode(), usedforsecurity=False
    ).hexdigest()


def served_commit(entry: CacheEntry, source: ModelSource | None) -> str:
    """What X-Repo-Commit says for ``entry``: the hub's commit, else a stable stand-in."""
    if entry.commit is not None:
        return entry.commit
    assert source is not None and source.repo_id and source.revision
    if re.fullmatch(r"[0-9a-f]{40}", source.revision):
        return source.revision
    return synthetic_commit(source.repo_id, source.revision)


class MirrorServer:
    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream: str | None = None,
        offline: bool = False,
        options: EnsureOptions | None = None,
    ) -> None:
        self.cache = Cache(cache_dir)
        base = options or EnsureOptions()
        self.options = base.merged(
            cache_dir=self.cache.root,
            hf_endpoint=upstream or base.hf_endpoint,
            policy=CachePolicy.CACHE_ONLY if offline else CachePolicy.PREFER_CACHED,
            progress=None,
            cancel=None,
        )
        self.httpd = ThreadingHTTPServer((host, port), self._handler())
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None
        # (repo, path, commit) -> the source an entry holding that commit was cached under.
        # Clients resolve a branch once, then ask for /resolve/<commit>/ (modelfetch and
        # snapshot_download do): that must be a hit on the entry cached for the branch.
        self._by_commit: dict[tuple[str, str, str], ModelSource] = {}
        self._by_commit_lock = threading.Lock()

    def _remember(self, source: ModelSource, entry: CacheEntry) -> str:
        """The commit we tell clients ``entry`` is at, indexed for their pinned requests."""
        commit = served_commit(entry, source)
        if source.repo_id and source.hf_path:
            with self._by_commit_lock:
                self._by_commit[(source.repo_id, source.hf_path, commit)] = source
        return commit

    def _cached_at_commit(self, repo_id: str, path: str, commit: str) -> CacheEntry | None:
        with self._by_commit_lock:
            source = self._by_commit.get((repo_id, path, commit))
        if source is None:
            source = self._find_at_commit(repo_id, path, commit)
        entry = self.cache.lookup_fast(source, None) if source is not None else None
        return entry if entry is not None and served_commit(entry, source) == commit else None

    def _find_at_commit(self, repo_id: str, path: str, commit: str) -> ModelSource | None:
        """Scan the cache (entries made before this mirror started, or by other processes)."""
        for entry in self.cache.list():
            if entry.source_kind != "hf" or entry.transient:
                continue
            try:
                source = ModelSource.parse(entry.source)
            except InvalidSourceError:
                continue
            same_file = (source.repo_id, source.hf_path) == (repo_id, path)
            if same_file and self._remember(source, entry) == commit:
                return source
        return None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        text = host.decode() if isinstance(host, bytes) else str(host)
        return f"http://{text}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- request handling -------------------------------------------------------------------
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            server_version = "modelfetch-mirror"

            def log_message(self, format: str, *args: object) -> None:
                log.debug("%s %s", self.address_string(), format % args)

            def do_HEAD(self) -> None:
                self._route(head=True)

            def do_GET(self) -> None:
                self._route(head=False)

            def _route(self, head: bool) -> None:
                try:
                    path = urllib.parse.urlsplit(self.path).path
                    parts = path.split("/")
                    if path == "/healthz":
                        return self._text(200, "ok\n", head)
                    if len(parts) == 3 and parts[1] == "by-key" and _KEY.match(parts[2]):
                        entries = [e for e in mirror.cache.list() if e.cache_key == parts[2]]
                        entries = [e for e in entries if not e.transient]
                        if not entries:
                            return self._text(404, "no such entry\n", head)
                        return self._send_entry(entries[0], head, {})
                    if len(parts) >= 6 and parts[3] == "resolve":
                        return self._resolve(parts, head)
                    return self._text(404, "unknown route\n", head)
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True
                except ModelFetchError as exc:  # e.g. a cache root refused as unsafe
                    return self._text(500, f"{printable(str(exc))}\n", head)

            def _resolve(self, parts: list[str], head: bool) -> None:
                try:
                    repo_id = f"{urllib.parse.unquote(parts[1])}/{urllib.parse.unquote(parts[2])}"
                    revision = urllib.parse.unquote(parts[4])
                    file_path = "/".join(urllib.parse.unquote(p) for p in parts[5:])
                    source = ModelSource.huggingface(repo_id, file_path, revision)
                except InvalidSourceError as exc:
                    return self._text(400, f"{exc}\n", head)
                try:
                    entry = None
                    if re.fullmatch(r"[0-9a-f]{40}", revision):
                        entry = mirror._cached_at_commit(repo_id, file_path, revision)
                    if entry is None:
                        entry = ensure(source, mirror.options)
                except CacheMissError:
                    return self._text(404, "not in this offline mirror\n", head)
                except DownloadError as exc:
                    code = exc.status if exc.status in (401, 403, 404, 410) else 502
                    return self._text(code, f"upstream: {exc}\n", head)
                except ModelFetchError as exc:
                    return self._text(502, f"{exc}\n", head)
                commit = mirror._remember(source, entry)
                extra = {
                    "X-Repo-Commit": commit,
                    "X-Linked-Etag": f'"{entry.sha256}"',
                    "X-Linked-Size": str(entry.bytes),
                }
                self._send_entry(entry, head, extra)

            def _send_entry(self, entry: CacheEntry, head: bool, extra: dict[str, str]) -> None:
                try:
                    fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
                except OSError:
                    return self._text(404, "entry vanished\n", head)
                with os.fdopen(fd, "rb") as fh:
                    st = os.fstat(fh.fileno())
                    if not stat.S_ISREG(st.st_mode) or st.st_size != entry.bytes:
                        return self._text(500, "entry failed its size check\n", head)
                    etag = f'"{entry.sha256}"'
                    if self.headers.get("If-None-Match") in (etag, "*"):
                        return self._empty(304, {"ETag": etag, **extra})
                    start, end, status = 0, entry.bytes - 1, 200
                    wanted = self.headers.get("Range")
                    if_range = self.headers.get("If-Range")
                    match = _RANGE.match(wanted.strip()) if wanted else None
                    # RFC 9110: a Range we cannot parse (or several ranges) is ignored -> 200;
                    # only a well-formed range outside the file gets 416.
                    if match and (if_range is None or if_range == etag):
                        parsed = self._parse_range(match, entry.bytes)
                        if parsed is None:
                            return self._empty(416, {"Content-Range": f"bytes */{entry.bytes}"})
                        start, end = parsed
                        status = 206
                    length = max(0, end - start + 1)
                    self.send_response(status)
                    self.send_header("Content-Type", "application/octet-stream")
                    self.send_header("Content-Length", str(length))
                    self.send_header("Accept-Ranges", "bytes")
                    self.send_header("ETag", etag)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    if status == 206:
                        self.send_header("Content-Range", f"bytes {start}-{end}/{entry.bytes}")
                    self.end_headers()
                    if head or length == 0:
                        return
                    self.wfile.flush()
                    self.connection.sendfile(fh, start, length)

            @staticmethod
            def _parse_range(match: re.Match[str], size: int) -> tuple[int, int] | None:
                if (not match.group(1) and not match.group(2)) or size == 0:
                    return None
                if not match.group(1):  # suffix: the last N bytes
                    n = int(match.group(2))
                    return (max(0, size - n), size - 1) if n > 0 else None
                start = int(match.group(1))
                end = int(match.group(2)) if match.group(2) else size - 1
                if start >= size or end < start:
                    return None
                return start, min(end, size - 1)

            def _text(self, code: int, body: str, head: bool) -> None:
                data = body.encode("utf-8", "replace")
                self.send_response(code)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not head:
                    self.wfile.write(data)

            def _empty(self, code: int, headers: dict[str, str]) -> None:
                self.send_response(code)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
