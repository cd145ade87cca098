"""``modelfetch serve``: the cache as an HTTP mirror that Hugging Face clients can use.

Routes:

* ``GET|HEAD /{owner}/{repo}/resolve/{revision}/{path}``: the Hugging Face resolve route,
  so ``HF_ENDPOINT=http://mirror:port`` works for huggingface_hub, llama.cpp and friends.
  A miss is pulled through from the upstream hub (one download, however many clients ask
  at once), verified against the hub's SHA-256 (or git blob id), and then served. As on
  the hub, an LFS file's answer carries ``ETag``/``X-Linked-Etag`` (its SHA-256) and
  ``X-Linked-Size``, a git-stored file's carries ``ETag: "<git blob id>"`` and no
  ``X-Linked-*``; both carry ``X-Repo-Commit``. Clients name their cached copy after that
  ETag (huggingface_hub's ``blobs/``), so it must be the hub's. A ``HEAD`` is answered as
  soon as the hub has described the file, and its body streams to every client while the
  pull runs (mirror_stream.py); the last byte goes out only once the whole file is verified.
* ``GET /api/models/{repo}[/revision/{rev}]`` and ``/api/models/{repo}/tree/{rev}[/{path}]``
  (paginated with ``Link``): what ``snapshot_download`` and ``hf download`` ask before the
  files, pulled through and kept per commit, with Xet stripped (mirror_api.py).
* ``GET|HEAD /by-key/{cache key}``: any verified entry (also plain URL sources).
* ``GET /healthz``.

Every answer supports single ``Range`` requests, ``If-Range`` and ``If-None-Match``; bodies
go out with ``sendfile(2)``. The mirror uses its own token for the upstream (HF_TOKEN of the
server process) and never forwards a client's credentials.

Why an event loop: a mirror is many clients, some slow or idle, a few pulling large files.
With a thread per connection, idle keep-alive connections and slowloris clients hold
threads, and the standard library's listen backlog of 5 makes a burst of clients wait
seconds for SYN retransmits. Here asyncio holds every connection at no cost, a request head
must arrive within ``idle_timeout`` and a body must keep moving within ``io_timeout``, the
backlog is real, and blocking work (cache lookups, file opens) runs in a bounded thread
pool; pulls from the upstream run in a pool of their own, one per file however many
clients wait for it, so misses never hold up hits.

With ``max_bytes`` the cache is kept to that size after each pull: the least recently used
entries nobody is reading are removed (``Cache.prune``); an entry being sent to a client or
being downloaded is never removed.

Logs never contain a query string: a request target is logged as its path, with
``?<redacted>`` in place of any query.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import logging
import os
import re
import socket
import stat
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from .cache import Cache, CacheEntry
from .cache.part import part_paths
from .cancel import CancelToken
from .core.httpwire import serve_range
from .ensure import ensure
from .errors import CacheMissError, DownloadError, InvalidSourceError, ModelFetchError
from .mirror_api import PAGE_SIZE, MirrorApi
from .mirror_stream import Fill, FillReader, StreamCut
from .options import CachePolicy, EnsureOptions, env_remote
from .redact import REDACTED, printable
from .source import HubFile, ModelSource

log = logging.getLogger("modelfetch.mirror")
_KEY = re.compile(r"^[0-9a-f]{64}$")
_HEAD_LIMIT = 64 * 1024  # request line + headers
_MIN_STEP = 1024 * 1024  # sendfile per step at first; each step must finish within io_timeout
_MAX_STEP = 32 * 1024 * 1024


def next_send_step(sent: int, seconds: float, io_timeout: float) -> int:
    """Bytes the next sendfile step may cover: what the client took in an eighth of
    io_timeout at its last rate (so a step still ends within io_timeout if the client slows
    down eightfold), from 1 to 32 MiB. Each step costs the event loop a fixed amount, so a
    fast reader gets few large steps (1 MiB steps held 8 readers to 0.66x nginx)."""
    if seconds <= 0:
        return _MAX_STEP
    return max(_MIN_STEP, min(_MAX_STEP, int(sent / seconds * io_timeout / 8)))


_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:\d{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:\d{1,5})?$")


def synthetic_commit(repo_id: str, revision: str) -> str:
    """A stable stand-in when an entry was cached without the hub's commit id: clients
    such as huggingface_hub need one to lay out their snapshot folders."""
    return hashlib.sha1(
        f"modelfetch:{repo_id}@{revision}".encode(), usedforsecurity=False
    ).hexdigest()


def served_commit(entry: CacheEntry, source: HubFile) -> str:
    """What X-Repo-Commit says for ``entry``: the hub's commit, else a stable stand-in."""
    return commit_or_standin(entry.commit, source)


def commit_or_standin(commit: str | None, source: HubFile) -> str:
    """``commit`` (the hub's), else the source's revision if it is a commit id, else a
    stable stand-in: the same for a file being pulled as for the entry it becomes."""
    if commit is not None:
        return commit
    if re.fullmatch(r"[0-9a-f]{40}", source.revision):
        return source.revision
    return synthetic_commit(source.repo_id, source.revision)


def loggable_target(target: str) -> str:
    """A request target as it may be logged: the path, never the query (signatures)."""
    path, sep, _ = target.partition("?")
    path = path.partition("#")[0]
    shown = "".join(c if c.isprintable() else "?" for c in path[:300])
    return f"{shown}?{REDACTED}" if sep else shown


@dataclass
class Request:
    method: str
    target: str
    version: str
    headers: dict[str, str]  # lower-cased names

    @property
    def keep_alive(self) -> bool:
        connection = self.headers.get("connection", "").lower()
        if self.version == "HTTP/1.0":
            return "keep-alive" in connection
        return "close" not in connection


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: BinaryIO | None = None  # sent from ``offset``, ``length`` bytes
    offset: int = 0
    length: int = 0
    stream: FillReader | None = None  # like ``file``, from a file still being pulled
    release: Callable[[], None] | None = None  # called once the answer is sent (or not)

    @property
    def body_size(self) -> int:
        return self.length if self.file is not None or self.stream is not None else len(self.body)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.stream is not None:
            self.stream.close()
        release, self.release = self.release, None
        if release is not None:
            release()


@dataclass
class Pull:
    """One pull from the upstream, shared by every client that asks for the file meanwhile."""

    source: HubFile
    fill: Fill
    future: asyncio.Future[CacheEntry]

    def commit(self) -> str | None:
        """The commit clients are told, once the hub has described the file."""
        info = self.fill.info
        return None if info is None else commit_or_standin(info.commit, self.source)


_REASONS = {
    200: "OK",
    206: "Partial Content",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    410: "Gone",
    416: "Range Not Satisfiable",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    505: "HTTP Version Not Supported",
}


def parse_head(head: bytes) -> Request | None:
    """The request line and headers (without a body: GET and HEAD have none)."""
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or line[0] in " \t":
            return None  # no obsolete line folding, no space before the colon
        headers[name.lower()] = value.strip()
    return Request(parts[0], parts[1], parts[2], headers)


def text_reply(status: int, message: str) -> Reply:
    return Reply(
        status, {"Content-Type": "text/plain; charset=utf-8"}, message.encode("utf-8", "replace")
    )


def closing(status: int, message: str) -> Reply:
    reply = text_reply(status, message)
    reply.headers["Connection"] = "close"
    return reply


class MirrorServer:
    def __init__(
        self,
        cache_dir: str | os.PathLike[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        upstream: str | None = None,
        offline: bool = False,
        options: EnsureOptions | None = None,
        *,
        workers: int = 16,
        pulls: int = 4,
        backlog: int = 1024,
        idle_timeout: float = 30.0,
        io_timeout: float = 60.0,
        api_page_size: int = PAGE_SIZE,
        max_bytes: int | None = None,
    ) -> None:
        self.cache = Cache(cache_dir)
        self.max_bytes = max_bytes
        base = options or EnsureOptions()
        self._stopping = CancelToken()  # fired by stop(): running pulls keep their parts
        self.options = base.merged(
            cache_dir=self.cache.root,
            hf_endpoint=upstream or base.hf_endpoint,
            policy=CachePolicy.CACHE_ONLY if offline else CachePolicy.PREFER_CACHED,
            progress=None,
            cancel=self._stopping,
        )
        self.api = MirrorApi(self.cache, self.options, offline, api_page_size)
        self.backlog = backlog
        self.idle_timeout = idle_timeout
        self.io_timeout = io_timeout
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # Bound here, so the port is known (and connections queue) before serving starts.
        self.sock = socket.create_server((host, port), family=family, backlog=backlog)
        self.server_address: tuple[str, int] = self.sock.getsockname()[:2]
        self._work = ThreadPoolExecutor(workers, thread_name_prefix="modelfetch-mirror")
        self._pull_pool = ThreadPoolExecutor(pulls, thread_name_prefix="modelfetch-pull")
        self._pulls: dict[str, Pull] = {}
        # Entry directory name -> answers being sent from it (never evicted meanwhile).
        self._readers: Counter[str] = Counter()
        self._readers_lock = threading.Lock()
        self._evict_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closing: asyncio.Event | None = None
        self._clients: dict[asyncio.Task[None], asyncio.StreamWriter] = {}
        self._ready = threading.Event()
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        # (repo, path, commit) -> the source an entry holding that commit was cached under.
        # Clients resolve a branch once, then ask for /resolve/<commit>/ (modelfetch and
        # snapshot_download do): that must be a hit on the entry cached for the branch.
        self._by_commit: dict[tuple[str, str, str], HubFile] = {}
        self._by_commit_lock = threading.Lock()

    def _remember(self, source: HubFile, entry: CacheEntry) -> str:
        """The commit we tell clients ``entry`` is at, indexed for their pinned requests."""
        commit = served_commit(entry, source)
        with self._by_commit_lock:
            self._by_commit[(source.repo_id, source.hf_path, commit)] = source
        return commit

    def _cached_at_commit(self, source: HubFile) -> CacheEntry | None:
        """A cached entry of ``source``'s file at the commit its revision names, also one
        cached under a branch name; a plain hit otherwise."""
        entry = self.cache.lookup_fast(source, None)
        revision, repo_id, path = source.revision, source.repo_id, source.hf_path
        if entry is not None:
            return entry
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            return None
        with self._by_commit_lock:
            known = self._by_commit.get((repo_id, path, revision))
        if known is None:
            known = self._find_at_commit(repo_id, path, revision)
        if known is None:
            return None
        entry = self.cache.lookup_fast(known, None)
        return entry if entry is not None and served_commit(entry, known) == revision else None

    def _find_at_commit(self, repo_id: str, path: str, commit: str) -> HubFile | None:
        """Scan the cache (entries made before this mirror started, or by other processes)."""
        for entry in self.cache.list():
            if entry.source_kind != "hf" or entry.transient:
                continue
            try:
                source = ModelSource.parse(entry.source)  # hostile: any variant
            except InvalidSourceError:
                continue
            if not isinstance(source, HubFile):
                continue
            same_file = (source.repo_id, source.hf_path) == (repo_id, path)
            if same_file and self._remember(source, entry) == commit:
                return source
        return None

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    def serve_forever(self) -> None:
        """Serve in the calling thread until stop() (or KeyboardInterrupt)."""
        try:
            asyncio.run(self._serve())
        finally:
            self._done.set()
            self._ready.set()

    def start(self) -> MirrorServer:
        self._thread = threading.Thread(
            target=self.serve_forever, name="modelfetch-mirror-loop", daemon=True
        )
        self._thread.start()
        self._ready.wait(30)
        return self

    def stop(self) -> None:
        self._stopping.cancel()
        loop, closing = self._loop, self._closing
        if loop is not None and closing is not None and not self._done.is_set():
            try:
                loop.call_soon_threadsafe(closing.set)
            except RuntimeError:
                pass  # the loop already ended
            if self._thread is not None and self._thread is not threading.current_thread():
                self._done.wait(30)
        self._work.shutdown(wait=False, cancel_futures=True)
        self._pull_pool.shutdown(wait=False, cancel_futures=True)
        self.sock.close()

    def __enter__(self) -> MirrorServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the event loop ---------------------------------------------------------------------
    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._closing = asyncio.Event()
        server = await asyncio.start_server(
            self._connection, sock=self.sock, backlog=self.backlog, limit=_HEAD_LIMIT
        )
        self._ready.set()
        try:
            await self._closing.wait()
        finally:
            server.close()
            # Hang up on every client so their tasks end on their own (a task waiting for
            # a pull ends when the pull, cancelled above, does); cancel only stragglers.
            for writer in list(self._clients.values()):
                writer.transport.abort()
            if self._clients:
                _, late = await asyncio.wait(list(self._clients), timeout=5)
                for task in late:
                    task.cancel()
                await asyncio.gather(*late, return_exceptions=True)
            await server.wait_closed()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._clients[task] = writer
        peer = writer.get_extra_info("peername")
        client = peer[0] if isinstance(peer, tuple) else "?"
        try:
            while True:
                try:
                    # The whole head must arrive within idle_timeout: an idle keep-alive
                    # connection or a client trickling its headers costs nothing but a
                    # socket, and not for long.
                    head = await asyncio.wait_for(
                        reader.readuntil(b"\r\n\r\n"), timeout=self.idle_timeout
                    )
                except asyncio.LimitOverrunError:
                    await self._send(writer, None, closing(431, "request head too large\n"))
                    return
                except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
                    return
                request = parse_head(head)
                if request is None:
                    await self._send(writer, None, closing(400, "malformed request\n"))
                    return
                keep = request.keep_alive and not _has_body(request)
                reply = await self._answer(request)
                reply.headers["Connection"] = "keep-alive" if keep else "close"
                log.info(
                    '%s "%s %s" %d %s',
                    client,
                    request.method[:16],
                    loggable_target(request.target),
                    reply.status,
                    reply.body_size,
                )
                if not await self._send(writer, request, reply) or not keep:
                    return
        except (ConnectionError, asyncio.TimeoutError, OSError):
            return
        except asyncio.CancelledError:
            return  # the server is stopping; this task is the connection's own, top level
        finally:
            if task is not None:
                self._clients.pop(task, None)
            writer.transport.abort()

    async def _answer(self, request: Request) -> Reply:
        if request.method not in ("GET", "HEAD"):
            reply = text_reply(405, "only GET and HEAD\n")
            reply.headers["Allow"] = "GET, HEAD"
            return reply
        loop = asyncio.get_running_loop()
        try:
            source = self._resolve_source(request.target)
            if isinstance(source, Reply):
                return source
            if source is not None:
                return await self._hub_file(request, source)
            return await loop.run_in_executor(self._work, self._plain_route, request)
        except ModelFetchError as exc:  # e.g. a cache root refused as unsafe
            return text_reply(500, f"{printable(str(exc))}\n")
        except Exception as exc:  # never let one request take the server down
            log.warning("internal error answering a request (%s)", type(exc).__name__)
            return text_reply(500, "internal error\n")

    async def _send(
        self, writer: asyncio.StreamWriter, request: Request | None, reply: Reply
    ) -> bool:
        """Write the answer; False if the client went away or stopped reading, or if the
        body could not be completed (the connection is then closed: a short body)."""
        head_only = request is not None and request.method == "HEAD"
        size = reply.body_size
        lines = [f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Unknown')}"]
        headers = {
            "Server": "modelfetch-mirror",
            "Date": email.utils.formatdate(usegmt=True),
            "Content-Length": str(size),
            **reply.headers,
        }
        lines += [f"{name}: {value}" for name, value in headers.items()]
        try:
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace"))
            if not head_only:
                if reply.file is not None:
                    await self._send_file(writer, reply)
                elif reply.stream is not None:
                    await self._send_stream(writer, reply, reply.stream)
                else:
                    writer.write(reply.body)
            await asyncio.wait_for(writer.drain(), timeout=self.io_timeout)
        except StreamCut as exc:
            log.warning("cut a response short: %s", exc)
            return False
        except (ConnectionError, asyncio.TimeoutError, OSError):
            return False
        finally:
            reply.close()
        return True

    async def _send_file(self, writer: asyncio.StreamWriter, reply: Reply) -> None:
        assert reply.file is not None
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(writer.drain(), timeout=self.io_timeout)
        offset, left, allowed = reply.offset, reply.length, _MIN_STEP
        while left > 0:
            # A client that stops reading is dropped after io_timeout, not kept forever.
            began = time.monotonic()
            sent = await _sendfile(
                loop, writer, reply.file, offset, min(left, allowed), self.io_timeout
            )
            if sent <= 0:
                raise ConnectionError("client stopped reading")
            allowed = next_send_step(sent, time.monotonic() - began, self.io_timeout)
            offset += sent
            left -= sent

    async def _send_stream(
        self, writer: asyncio.StreamWriter, reply: Reply, stream: FillReader
    ) -> None:
        """Send bytes of a file being pulled as the pull makes them available."""
        loop = asyncio.get_running_loop()
        await asyncio.wait_for(writer.drain(), timeout=self.io_timeout)
        pos, end, allowed = reply.offset, reply.offset + reply.length, _MIN_STEP
        while pos < end:  # every turn sends at least one byte, or raises
            file, available = await stream.span(pos, self.io_timeout)
            step = min(end, available, pos + allowed) - pos
            stream.started = True
            began = time.monotonic()
            sent = await _sendfile(loop, writer, file, pos, step, self.io_timeout)
            if sent <= 0:
                raise ConnectionError("client stopped reading")
            allowed = next_send_step(sent, time.monotonic() - began, self.io_timeout)
            pos += sent

    # -- routes -----------------------------------------------------------------------------
    def _resolve_source(self, target: str) -> HubFile | Reply | None:
        """The source a resolve route names (or a 400), None for the other routes."""
        parts = urllib.parse.urlsplit(target).path.split("/")
        if not (len(parts) >= 6 and parts[3] == "resolve"):
            return None
        try:
            repo_id = f"{urllib.parse.unquote(parts[1])}/{urllib.parse.unquote(parts[2])}"
            revision = urllib.parse.unquote(parts[4])
            file_path = "/".join(urllib.parse.unquote(p) for p in parts[5:])
            return ModelSource.huggingface(repo_id, file_path, revision)
        except InvalidSourceError as exc:
            return text_reply(400, f"{exc}\n")

    async def _hub_file(self, request: Request, source: HubFile) -> Reply:
        loop = asyncio.get_running_loop()
        for _ in range(2):  # a second time if the entry was evicted between lookup and open
            found = await self._entry_for(source)
            if isinstance(found, Reply):
                return found
            if isinstance(found, Pull):
                return self._fill_reply(request, found)
            reply = await loop.run_in_executor(
                self._work, self._entry_reply, request, found, source
            )
            if reply is not None:
                return reply
        return text_reply(503, "entry vanished; try again\n")

    async def _entry_for(self, source: HubFile) -> CacheEntry | Pull | Reply:
        """A verified entry: a cached one at once, else one pull from the upstream that all
        the clients asking for this file share; that pull itself once the hub has described
        the file, if it can be served while it runs."""
        loop = asyncio.get_running_loop()
        hit = await loop.run_in_executor(self._work, self._cached_at_commit, source)
        if hit is not None:
            return hit
        pull = self._pulls.get(source.cache_key) or self._pull_at_commit(source)
        if pull is None:
            pull = self._start_pull(source)
        # Until the hub has described the file (then it may be served while it is pulled)
        # or the pull has ended, whichever comes first.
        either: list[asyncio.Future[Any]] = [pull.future, pull.fill.description]
        await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        if not pull.future.done() and pull.fill.streamable():
            return pull
        try:
            return await asyncio.shield(pull.future)
        except CacheMissError:
            return text_reply(404, "not in this offline mirror\n")
        except DownloadError as exc:
            code = exc.status if exc.status in (401, 403, 404, 410) else 502
            return text_reply(code, f"upstream: {printable(str(exc))}\n")
        except ModelFetchError as exc:
            return text_reply(502, f"{printable(str(exc))}\n")

    def _start_pull(self, source: HubFile) -> Pull:
        loop = asyncio.get_running_loop()
        part = part_paths(self.cache.entry_dir(source), source.file_name)[0]
        fill = Fill(loop, part)
        future = loop.run_in_executor(self._pull_pool, self._pull, source, fill)
        pull = Pull(source, fill, future)
        key = source.cache_key
        self._pulls[key] = pull
        future.add_done_callback(lambda _: self._pulls.pop(key, None))
        return pull

    def _pull_at_commit(self, source: HubFile) -> Pull | None:
        """A running pull of the same file at the commit ``source`` names (a client that
        resolved a branch through us and now asks for its commit, as modelfetch does)."""
        revision = source.revision
        if not re.fullmatch(r"[0-9a-f]{40}", revision):
            return None
        for pull in self._pulls.values():
            same_file = (pull.source.repo_id, pull.source.hf_path) == (
                source.repo_id,
                source.hf_path,
            )
            if same_file and pull.commit() == revision:
                return pull
        return None

    def _pull(self, source: HubFile, fill: Fill) -> CacheEntry:
        """The pull itself (a pull thread): just this file (not a split model's siblings:
        clients ask for each), watched by ``fill`` so clients can be served while it runs."""
        opts = self.options.merged(shards=False, watcher=fill)
        try:
            if opts.remote or env_remote():
                opts = self._described_by_hub(source, opts, fill)
            entry = ensure(source, opts)
            fill.finish(entry)
        except BaseException as exc:
            fill.fail(exc)
            raise
        self._remember(source, entry)
        self._evict()
        return entry

    @staticmethod
    def _described_by_hub(source: HubFile, opts: EnsureOptions, fill: Fill) -> EnsureOptions:
        """With a shared tier, the file may come from another machine without this one
        asking the hub, so ask first (the HEAD a download sends) and pin what it says: the
        bytes served are then the ones the first answers described."""
        from .fetch.base import credentials_for
        from .fetch.hub import head_hub_file

        url = source.resolve_url(opts.hf_endpoint)
        creds = credentials_for(source, opts)
        try:
            info = head_hub_file(url, creds, opts.connect_timeout, opts.read_timeout, opts.cancel)
        except DownloadError as exc:
            if exc.status in (401, 403, 404, 410):
                raise
            return opts  # the pull asks again (with retries) if it needs the hub
        fill.described(info)
        return opts.merged(
            sha256=opts.sha256 or info.sha256, git_sha1=opts.git_sha1 or info.git_sha1
        )

    # -- the size cap -----------------------------------------------------------------------
    def _reading(self, directory: Path) -> Callable[[], None]:
        """Count an answer being sent from ``directory``; returns its release."""
        name = directory.name
        with self._readers_lock:
            self._readers[name] += 1
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with self._readers_lock:
                self._readers[name] -= 1
                if self._readers[name] <= 0:
                    del self._readers[name]

        return release

    def _in_use(self, entry: CacheEntry) -> bool:
        with self._readers_lock:
            return self._readers.get(entry.directory.name, 0) > 0

    def _evict(self) -> None:
        """Keep the cache within max_bytes: least recently used entries nobody is reading
        go first; entries being downloaded are locked, so prune skips them too."""
        if self.max_bytes is None:
            return
        with self._evict_lock:
            try:
                report = self.cache.prune(max_bytes=self.max_bytes, keep=self._in_use)
            except ModelFetchError as exc:
                log.warning("could not keep the cache within --max-bytes: %s", printable(str(exc)))
                return
        for entry in report.removed:
            log.info("evicted %s (%d bytes, least recently used)", entry.cache_key[:12], entry.size)

    def _plain_route(self, request: Request) -> Reply:
        path = urllib.parse.urlsplit(request.target).path
        parts = path.split("/")
        if path == "/healthz":
            return text_reply(200, "ok\n")
        if len(parts) >= 5 and parts[1:3] == ["api", "models"]:
            return self._api_reply(request, path)
        if len(parts) == 3 and parts[1] == "by-key" and _KEY.match(parts[2]):
            entries = [e for e in self.cache.list() if e.cache_key == parts[2]]
            entries = [e for e in entries if not e.transient]
            if not entries:
                return text_reply(404, "no such entry\n")
            reply = self._file_reply(request, entries[0], {})
            return reply if reply is not None else text_reply(404, "entry vanished\n")
        return text_reply(404, "unknown route\n")

    def _api_reply(self, request: Request, path: str) -> Reply:
        """The hub API routes (mirror_api.py); blocking, so on the worker pool."""
        host = request.headers.get("host", "")
        if not _HOST.match(host):  # it goes into Link headers: only a plain host
            host = urllib.parse.urlsplit(self.url).netloc
        answer = self.api.handle(path, urllib.parse.urlsplit(request.target).query, host)
        return Reply(answer.status, answer.headers, answer.body)

    def _entry_reply(self, request: Request, entry: CacheEntry, source: HubFile) -> Reply | None:
        commit = self._remember(source, entry)
        # A git-stored file is answered as the hub's /api/resolve-cache/ does; an LFS file
        # (or one cached without a verified git blob id) by its SHA-256.
        etag, extra = _served_as(entry.sha256, entry.git_sha1, entry.size, commit)
        return self._file_reply(request, entry, extra, etag)

    def _fill_reply(self, request: Request, pull: Pull) -> Reply:
        """The answer for a file still being pulled: the headers the finished file will
        have, and a body sent as the pull makes it available."""
        info = pull.fill.info
        assert info is not None and info.size
        commit = commit_or_standin(info.commit, pull.source)
        etag, extra = _served_as(info.sha256, info.git_sha1, info.size, commit)
        reply = _plan(request, info.size, etag, extra)
        if reply.status in (200, 206):
            reply.stream = FillReader(pull.fill, info.size)
            reply.release = self._reading(self.cache.entry_dir(pull.source))
        return reply

    def _file_reply(
        self, request: Request, entry: CacheEntry, extra: dict[str, str], etag: str | None = None
    ) -> Reply | None:
        """The entry's bytes; ``etag`` (default: the SHA-256) is what ``If-None-Match`` and
        ``If-Range`` are compared with. None if the file is gone (evicted since it was
        looked up)."""
        try:
            fd = os.open(entry.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        fh = os.fdopen(fd, "rb")
        try:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry.size:
                fh.close()
                return text_reply(500, "entry failed its size check\n")
            reply = _plan(request, entry.size, etag or f'"{entry.sha256}"', extra)
            if reply.status not in (200, 206):
                fh.close()
                return reply
            reply.file = fh
            reply.release = self._reading(entry.directory)
            return reply
        except BaseException:
            fh.close()
            raise


def _served_as(
    sha256: str | None, git_sha1: str | None, size: int, commit: str
) -> tuple[str, dict[str, str]]:
    """The ETag and hub headers a file is answered with, as the hub does: a git-stored
    file by its git blob id, an LFS file by its SHA-256 with ``X-Linked-*``."""
    if git_sha1 is not None:
        return f'"{git_sha1}"', {"X-Repo-Commit": commit}
    assert sha256 is not None
    return f'"{sha256}"', {
        "X-Repo-Commit": commit,
        "X-Linked-Etag": f'"{sha256}"',
        "X-Linked-Size": str(size),
    }


def _plan(request: Request, size: int, etag: str, extra: dict[str, str]) -> Reply:
    """Status, headers and the span of a ``size``-byte body to send (no body attached):
    ``If-None-Match``, one ``Range`` and ``If-Range`` as RFC 9110 says."""
    if request.headers.get("if-none-match") in (etag, "*"):
        return Reply(304, {"ETag": etag, **extra})
    status, start, end = 200, 0, size - 1
    if request.headers.get("if-range") in (None, etag):
        status, start, end = serve_range(request.headers.get("range"), size)
    if status == 416:
        return Reply(416, {"Content-Range": f"bytes */{size}"})
    headers = {
        "Content-Type": "application/octet-stream",
        "Accept-Ranges": "bytes",
        "ETag": etag,
        **extra,
    }
    if status == 206:
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    return Reply(status, headers, offset=start, length=max(0, end - start + 1))


async def _sendfile(
    loop: asyncio.AbstractEventLoop,
    writer: asyncio.StreamWriter,
    file: BinaryIO,
    offset: int,
    count: int,
    timeout: float,
) -> int:
    """One sendfile step; a client that stops reading is dropped after ``timeout``."""
    try:
        return await asyncio.wait_for(
            loop.sendfile(writer.transport, file, offset, count), timeout=timeout
        )
    except RuntimeError as exc:  # asyncio's "Transport is closing": the client went away
        raise ConnectionError(str(exc)) from None


def _has_body(request: Request) -> bool:
    """GET and HEAD bodies are not read; a connection that sent one cannot be reused."""
    length = request.headers.get("content-length", "0").strip()
    return length not in ("", "0") or "transfer-encoding" in request.headers
