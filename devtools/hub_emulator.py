"""A Hugging Face hub and its CDN, as two real HTTP servers on loopback (two origins).

It behaves the way today's huggingface.co does for downloads (see ../shared/hf-facts.md and
huggingface_hub's ``file_download.py``/``_snapshot_download.py``):

* ``HEAD|GET /{owner}/{repo}/resolve/{rev}/{path}`` on the hub: for an LFS file a ``302``
  to a presigned CDN URL (``X-Amz-Date``/``X-Amz-Expires``/``X-Amz-Signature``) carrying
  ``X-Repo-Commit``, ``X-Linked-Etag: "<sha256>"``, ``X-Linked-Size``, ``ETag`` and, when
  ``xet`` is on, ``X-Xet-Hash`` and ``Link: <...>; rel="xet-auth"``; for a git-stored file
  a ``307`` with a *relative* ``Location: /api/resolve-cache/models/...`` whose ``200``
  carries ``ETag: "<git blob sha1>"``. ``rev`` is a branch, a tag or a 40-hex commit,
  percent-encoded when it holds ``/`` (``refs%2Fpr%2F1``). Errors carry the
  ``X-Error-Code`` huggingface_hub understands (``RepoNotFound``, ``RevisionNotFound``,
  ``EntryNotFound``). ``If-None-Match`` with the file's ETag answers ``304``.
* The CDN serves a blob only through a valid, unexpired signature (else ``403`` with an
  S3-style XML body; the status is configurable), with **its own** ETag (an MD5, never the
  SHA-256), ``Accept-Ranges``, one ``Range``, ``If-Range`` against its own ETag only, and
  none of the hub's headers. Like S3, it refuses a presigned request that also carries an
  ``Authorization`` header (``400``): a client leaking the hub token to the CDN fails.
* ``GET /api/models/{repo}[/revision/{rev}]`` (model info with ``sha`` and ``siblings``)
  and ``GET /api/models/{repo}/tree/{rev}[/{path}]?recursive=true`` paginated with
  ``Link: <...>; rel="next"`` (``page_size`` items per page).

Repos live in memory: branches and tags point at commits (40-hex), a commit maps paths to
bytes and whether they are in LFS. ``push``/``move_branch``/``tag`` are thread-safe and
may run while a download is under way. Each origin keeps a request log (method, path,
headers, status, body bytes sent) and has switchable faults: a per-connection rate limit,
dropping a body after N bytes, failing the next N requests with a status, and a pause
(``pause_after(n)``: no body bytes beyond the first n in all until ``resume()``).

Time: ``advance_clock(seconds)`` moves the emulator's clock, so tests can expire every URL
handed out so far without waiting. ``X-Amz-Date`` is rounded *up* to the second, so a URL
lives at least ``url_lifetime`` seconds (and less than one more).
"""

from __future__ import annotations

import base64
import calendar
import email.utils
import hashlib
import hmac
import itertools
import json
import math
import re
import secrets
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_TEXT_SUFFIXES = (".md", ".json", ".txt", ".py", ".yaml", ".yml", ".jinja", ".gitattributes")
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
PAUSE_LIMIT = 120.0  # seconds a paused body waits for resume() at most


def git_blob_sha1(data: bytes) -> str:
    """The id git gives a file's content: sha1(b"blob <size>\\0" + content)."""
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    """The small text file git stores in place of an LFS file."""
    sha = hashlib.sha256(data).hexdigest()
    return (
        f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha}\nsize {len(data)}\n".encode()
    )


def default_lfs(path: str) -> bool:
    """Like a typical model repo's .gitattributes: weights in LFS, small text files in git."""
    return not path.lower().endswith(_TEXT_SUFFIXES)


@dataclass(frozen=True)
class RepoFile:
    data: bytes
    lfs: bool
    sha256: str
    git_oid: str  # git blob id of the content, or of the LFS pointer for LFS files

    @classmethod
    def make(cls, data: bytes, lfs: bool) -> RepoFile:
        oid = git_blob_sha1(lfs_pointer(data) if lfs else data)
        return cls(data, lfs, hashlib.sha256(data).hexdigest(), oid)

    @property
    def etag(self) -> str:
        """What the hub calls the file's ETag: the SHA-256 for LFS, the git blob id else."""
        return self.sha256 if self.lfs else self.git_oid


@dataclass(frozen=True)
class Commit:
    oid: str
    files: Mapping[str, RepoFile]
    parent: str | None
    when: float


@dataclass
class Repo:
    repo_id: str
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    commits: dict[str, Commit] = field(default_factory=dict)


@dataclass
class LoggedRequest:
    method: str
    path: str  # as sent, with the query string
    headers: dict[str, str]
    status: int = 0
    body_bytes: int = 0  # body bytes actually written to the socket

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Faults:
    """Misbehaviour switched on by tests; each entry is used up by one request."""

    fail_statuses: list[int] = field(default_factory=list)
    retry_after: str | None = None
    drop_after: list[int] = field(default_factory=list)  # close the body after N bytes
    # Only requests whose path contains this are affected (None: every request).
    path_contains: str | None = None

    def fail(self, status: int, times: int = 1) -> None:
        self.fail_statuses.extend([status] * times)


@dataclass
class Reply:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes | memoryview = b""


class Origin:
    """One HTTP server (the hub or the CDN) with its log, faults and rate limit."""

    def __init__(self, host: str, name: str, route: Callable[[_Request], Reply]) -> None:
        self.name = name
        self.log: list[LoggedRequest] = []
        self.faults = Faults()
        self.rate: float | None = None  # bytes per second per response body
        # Called with each request before it is answered: lets a test change the repo at an
        # exact point of the protocol (say, move a branch after the first listing page).
        self.on_request: Callable[[LoggedRequest], None] | None = None
        self.closing = threading.Event()
        self._lock = threading.Lock()
        # pause_after(): body bytes this origin may send in all before resume() (None: any).
        self._allowance: int | None = None
        self._sent = 0
        self._flow = threading.Condition()
        self._route = route
        self.httpd = _Server((host, 0), self._handler_class())
        self.httpd.daemon_threads = True
        self.host = host
        self.port = int(self.httpd.server_address[1])
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base + path

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def requests(self, method: str | None = None, contains: str = "") -> list[LoggedRequest]:
        with self._lock:
            return [
                r for r in self.log if (method is None or r.method == method) and contains in r.path
            ]

    def body_bytes(self) -> int:
        """Body bytes this origin sent so far (what a download cost it)."""
        with self._lock:
            return sum(r.body_bytes for r in self.log)

    def pause_after(self, total: int) -> None:
        """Hold every body before this origin would have sent more than ``total`` body
        bytes in all (counted from its start), until ``resume()``: a download kept short
        of its end for as long as a test needs (at most PAUSE_LIMIT seconds)."""
        with self._flow:
            self._allowance = total

    def resume(self) -> None:
        with self._flow:
            self._allowance = None
            self._flow.notify_all()

    def _admit(self, n: int) -> bool:
        """Wait until ``n`` more body bytes may go out; False if the origin is closing."""
        deadline = time.monotonic() + PAUSE_LIMIT
        with self._flow:
            while self._allowance is not None and self._sent + n > self._allowance:
                left = deadline - time.monotonic()
                if self.closing.is_set() or left <= 0:
                    return not self.closing.is_set()
                self._flow.wait(min(left, 0.1))
            self._sent += n
            return True

    def _take_faults(self, method: str, path: str) -> tuple[int | None, int | None]:
        with self._lock:
            f = self.faults
            if f.path_contains is not None and f.path_contains not in path:
                return None, None
            status = f.fail_statuses.pop(0) if f.fail_statuses else None
            body = method == "GET" and status is None  # only a body can be cut short
            drop = f.drop_after.pop(0) if f.drop_after and body else None
            return status, drop

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def handle(self) -> None:
                try:
                    super().handle()
                except OSError:  # a client hanging up on a kept-alive connection: no news
                    self.close_connection = True

            def do_HEAD(self) -> None:
                self._serve()

            def do_GET(self) -> None:
                self._serve()

            def _serve(self) -> None:
                record = LoggedRequest(self.command, self.path, dict(self.headers.items()))
                with origin._lock:
                    origin.log.append(record)
                if origin.on_request is not None:
                    origin.on_request(record)
                status, drop = origin._take_faults(self.command, self.path)
                if status is not None:
                    reply = Reply(status, [("Content-Type", "text/plain")], b"injected failure")
                    if origin.faults.retry_after:
                        reply.headers.append(("Retry-After", origin.faults.retry_after))
                else:
                    reply = origin._route(_Request(self.command, self.path, record.headers))
                record.status = reply.status
                self.send_response(reply.status)
                names = {k.lower() for k, _ in reply.headers}
                for name, value in reply.headers:
                    self.send_header(name, value)
                if "content-length" not in names:
                    self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                if self.command != "HEAD" and reply.body:
                    self._send_body(memoryview(reply.body), record, drop)

            def _send_body(self, body: memoryview, record: LoggedRequest, drop: int | None) -> None:
                rate = origin.rate
                chunk = 64 * 1024 if not rate else max(1024, min(64 * 1024, int(rate / 50)))
                started = time.monotonic()
                sent = 0
                try:
                    for i in range(0, len(body), chunk):
                        piece = body[i : i + chunk]
                        if rate:
                            wait = started + sent / rate - time.monotonic()
                            if wait > 0 and origin.closing.wait(wait):
                                return
                        if not origin._admit(len(piece)):
                            return
                        if drop is not None and sent + len(piece) > drop:
                            record.body_bytes = drop
                            self.wfile.write(piece[: max(0, drop - sent)])
                            self.wfile.flush()
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        # Counted before the write, so a test reading the log right after
                        # its client got the last byte sees them all.
                        sent += len(piece)
                        record.body_bytes = sent
                        self.wfile.write(piece)
                except OSError:  # the client went away (also: took its work elsewhere)
                    self.close_connection = True

        return Handler


class _Server(ThreadingHTTPServer):
    request_queue_size = 128  # many parallel segments connect at once


@dataclass(frozen=True)
class _Request:
    method: str
    raw_path: str
    headers: dict[str, str]

    def header(self, name: str) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == name.lower():
                return value
        return None

    @property
    def path(self) -> str:
        return self.raw_path.split("?", 1)[0]

    @property
    def query(self) -> dict[str, str]:
        return dict(urllib.parse.parse_qsl(self.raw_path.partition("?")[2], keep_blank_values=True))


def _ranged(req: _Request, data: bytes, etag: str | None, headers: list[tuple[str, str]]) -> Reply:
    """A 200/206/304/416 for ``data`` with strong ``etag`` (or none), honouring one Range
    and If-Range (which only its own ETag satisfies)."""
    headers = [*headers, ("Accept-Ranges", "bytes")]
    if etag is not None:
        headers.append(("ETag", etag))
        if req.header("If-None-Match") in (etag, "*"):
            return Reply(304, headers)
    size = len(data)
    rng = req.header("Range")
    if_range = req.header("If-Range")
    if rng is None or (if_range is not None and if_range != etag):
        return Reply(200, headers, data)  # a changed (or foreign) validator: the whole file
    m = _RANGE.match(rng.strip())
    if not m or not (m.group(1) or m.group(2)):
        return Reply(200, headers, data)  # multi-range or malformed: ignored (RFC 9110)
    if m.group(1):
        start = int(m.group(1))
        end = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        if m.group(2) and int(m.group(2)) < start:
            return Reply(200, headers, data)
    else:
        start, end = max(0, size - int(m.group(2))), size - 1
    if start >= size or size == 0:
        return Reply(416, [*headers, ("Content-Range", f"bytes */{size}")])
    headers.append(("Content-Range", f"bytes {start}-{end}/{size}"))
    return Reply(206, headers, memoryview(data)[start : end + 1])


def _error(
    status: int, code: str | None, message: str, extra: Iterable[tuple[str, str]] = ()
) -> Reply:
    headers = [("Content-Type", "application/json"), ("X-Error-Message", message), *extra]
    if code is not None:
        headers.append(("X-Error-Code", code))
    return Reply(status, headers, json.dumps({"error": message}).encode())


def _tree_oid(commit: str, folder: str) -> str:
    return hashlib.sha1(f"{commit}:{folder}".encode(), usedforsecurity=False).hexdigest()


def _in_lfs(path: str, lfs: Iterable[str] | bool | None) -> bool:
    if lfs is None:
        return default_lfs(path)
    if isinstance(lfs, bool):
        return lfs
    return path in set(lfs)


def _iso(when: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(when))


class HubEmulator:
    """The hub on ``hub_host`` and the CDN on ``cdn_host``, each on its own port."""

    def __init__(
        self,
        *,
        hub_host: str = "127.0.0.1",
        cdn_host: str = "127.0.0.3",
        url_lifetime: int = 3600,
        page_size: int = 1000,
        token: str | None = None,
        xet: bool = True,
        cdn_etag: bool = True,
        expired_status: int = 403,
    ) -> None:
        self.url_lifetime = url_lifetime
        self.page_size = page_size
        self.token = token  # when set, the hub answers only requests bearing it
        self.xet = xet
        self.cdn_etag = cdn_etag  # False: the CDN sends no ETag at all (some CDNs do that)
        self.expired_status = expired_status
        self.repos: dict[str, Repo] = {}
        self.blobs: dict[str, bytes] = {}  # sha256 -> content, what the CDN stores
        # A lying server: bytes served instead of a file's content (keyed by its sha256 for
        # LFS files, by its git blob id for git files), with every header left as it was.
        self.tampered: dict[str, bytes] = {}
        self._secret = secrets.token_bytes(32)
        # Per-blob digests, computed once: hashing a large blob on every request would make
        # the emulator, not the client under test, the slow part of a benchmark.
        self._digests: dict[tuple[str, str], str] = {}
        self._clock_offset = 0.0
        self._counter = itertools.count(1)
        self._lock = threading.RLock()
        self.hub = Origin(hub_host, "hub", self._hub_route)
        self.cdn = Origin(cdn_host, "cdn", self._cdn_route)

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> HubEmulator:
        self.hub.start()
        self.cdn.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hub.stop()
        self.cdn.stop()

    @property
    def endpoint(self) -> str:
        """What HF_ENDPOINT should be."""
        return self.hub.base

    def resolve_url(self, repo_id: str, path: str, revision: str = "main") -> str:
        rev = urllib.parse.quote(revision, safe="")
        return f"{self.endpoint}/{repo_id}/resolve/{rev}/{urllib.parse.quote(path)}"

    # -- time ----------------------------------------------------------------------------
    def now(self) -> float:
        return time.time() + self._clock_offset

    def advance_clock(self, seconds: float) -> None:
        """Let time pass for signatures: URLs handed out earlier may now be expired."""
        with self._lock:
            self._clock_offset += seconds

    # -- repository state ----------------------------------------------------------------
    def create_repo(
        self,
        repo_id: str,
        files: Mapping[str, bytes] | None = None,
        *,
        private: bool = False,
        lfs: Iterable[str] | bool | None = None,
    ) -> str:
        """A new repo whose ``main`` holds ``files``; returns the first commit."""
        with self._lock:
            if repo_id in self.repos:
                raise ValueError(f"repo {repo_id} exists")
            self.repos[repo_id] = Repo(repo_id, private)
            return self.push(repo_id, files or {}, lfs=lfs)

    def push(
        self,
        repo_id: str,
        files: Mapping[str, bytes | None],
        *,
        branch: str = "main",
        lfs: Iterable[str] | bool | None = None,
    ) -> str:
        """Commit ``files`` (None deletes a path) on top of ``branch`` and move it there.

        ``lfs``: which paths go to LFS (True: all, False: none, None: weights yes, text no).
        A new branch (``refs/pr/1`` too) starts from ``main``."""
        with self._lock:
            repo = self.repos[repo_id]
            parent = repo.branches.get(branch) or repo.branches.get("main")
            tree = dict(repo.commits[parent].files) if parent else {}
            for path, data in files.items():
                if data is None:
                    tree.pop(path, None)
                    continue
                in_lfs = _in_lfs(path, lfs)
                tree[path] = RepoFile.make(data, in_lfs)
                if in_lfs:
                    self.blobs[tree[path].sha256] = data
                    self._digest("md5", tree[path].sha256, data)  # now, not on a request
                    if self.xet:
                        self._digest("xet", tree[path].sha256, data)
            seed = f"{repo_id}\n{parent}\n{next(self._counter)}\n" + "\n".join(
                f"{p} {f.git_oid}" for p, f in sorted(tree.items())
            )
            oid = hashlib.sha1(seed.encode(), usedforsecurity=False).hexdigest()
            repo.commits[oid] = Commit(oid, tree, parent, self.now())
            repo.branches[branch] = oid
            return oid

    def move_branch(self, repo_id: str, branch: str, commit: str) -> None:
        with self._lock:
            repo = self.repos[repo_id]
            if commit not in repo.commits:
                raise ValueError(f"no commit {commit} in {repo_id}")
            repo.branches[branch] = commit

    def tag(self, repo_id: str, name: str, commit: str) -> None:
        with self._lock:
            repo = self.repos[repo_id]
            if commit not in repo.commits:
                raise ValueError(f"no commit {commit} in {repo_id}")
            repo.tags[name] = commit

    def resolve(self, repo_id: str, revision: str) -> Commit | None:
        with self._lock:
            repo = self.repos.get(repo_id)
            if repo is None:
                return None
            if _COMMIT.match(revision) and revision in repo.commits:
                return repo.commits[revision]
            oid = repo.branches.get(revision) or repo.tags.get(revision)
            return repo.commits[oid] if oid else None

    def _digest(self, kind: str, sha256: str, data: bytes) -> str:
        """The CDN's MD5 ETag (quoted) or the Xet hash of ``data`` (whose SHA-256 is
        ``sha256``), computed once per blob."""
        key = (kind, sha256)
        with self._lock:
            known = self._digests.get(key)
        if known is None:
            if kind == "md5":
                known = '"' + hashlib.md5(data, usedforsecurity=False).hexdigest() + '"'
            else:
                known = hashlib.sha256(b"xet:" + data).hexdigest()
            with self._lock:
                self._digests[key] = known
        return known

    # -- signing -------------------------------------------------------------------------
    def _sign(self, path: str, params: list[tuple[str, str]]) -> str:
        canonical = path + "?" + urllib.parse.urlencode(sorted(params))
        return hmac.new(self._secret, canonical.encode(), hashlib.sha256).hexdigest()

    def presign(self, sha256: str, file_name: str) -> str:
        """A CDN URL for the blob, valid for ``url_lifetime`` seconds from now."""
        issued = math.ceil(self.now())
        stamp = time.strftime(_AMZ_DATE, time.gmtime(issued))
        path = f"/repos/{sha256[:2]}/{sha256[2:4]}/{sha256}"
        quoted = urllib.parse.quote(file_name)
        params = [
            ("response-content-disposition",
             f"attachment; filename*=UTF-8''{quoted}; filename=\"{quoted}\";"),
            ("X-Amz-Algorithm", "AWS4-HMAC-SHA256"),
            ("X-Amz-Content-Sha256", "UNSIGNED-PAYLOAD"),
            ("X-Amz-Credential", f"EMULATORKEY/{stamp[:8]}/us-east-1/s3/aws4_request"),
            ("X-Amz-Date", stamp),
            ("X-Amz-Expires", str(int(self.url_lifetime))),
            ("X-Amz-SignedHeaders", "host"),
            ("x-id", "GetObject"),
        ]  # fmt: skip
        params.append(("X-Amz-Signature", self._sign(path, params)))
        return self.cdn.url(path + "?" + urllib.parse.urlencode(params))

    def _check_signature(self, req: _Request) -> str | None:
        """None if the URL is validly signed and unexpired, else the S3 error code."""
        pairs = urllib.parse.parse_qsl(req.raw_path.partition("?")[2], keep_blank_values=True)
        given = [v for k, v in pairs if k == "X-Amz-Signature"]
        rest = [(k, v) for k, v in pairs if k != "X-Amz-Signature"]
        if len(given) != 1 or not hmac.compare_digest(given[0], self._sign(req.path, rest)):
            return "SignatureDoesNotMatch"
        fields = dict(rest)
        try:
            issued = calendar.timegm(time.strptime(fields["X-Amz-Date"], _AMZ_DATE))
            lifetime = int(fields["X-Amz-Expires"])
        except (KeyError, ValueError):
            return "AuthorizationQueryParametersError"
        return "AccessDenied" if self.now() > issued + lifetime else None

    # -- the CDN -------------------------------------------------------------------------
    def _cdn_route(self, req: _Request) -> Reply:
        m = re.fullmatch(r"/repos/[0-9a-f]{2}/[0-9a-f]{2}/([0-9a-f]{64})", req.path)
        if m is None or m.group(1) not in self.blobs:
            return self._s3_error(404, "NoSuchKey", "The specified key does not exist.")
        if req.header("Authorization") is not None:
            return self._s3_error(
                400,
                "InvalidArgument",
                "Only one auth mechanism allowed; only the X-Amz-Algorithm query parameter, "
                "Signature query string parameter or the Authorization header should be specified",
            )
        problem = self._check_signature(req)
        if problem == "AccessDenied":
            return self._s3_error(self.expired_status, problem, "Request has expired")
        if problem is not None:
            return self._s3_error(
                403, problem, "The request signature we calculated does not match"
            )
        data = self.blobs[m.group(1)]
        etag = self._digest("md5", m.group(1), data)
        data = self.tampered.get(m.group(1), data)
        headers = [
            ("Content-Type", "application/octet-stream"),
            ("Last-Modified", email.utils.formatdate(1_700_000_000, usegmt=True)),
            ("x-amz-server-side-encryption", "AES256"),
        ]
        disposition = req.query.get("response-content-disposition")
        if disposition:
            headers.append(("Content-Disposition", disposition))
        # The CDN's own validator (an MD5 like S3's, computed above), never the hub's SHA-256.
        return _ranged(req, data, etag if self.cdn_etag else None, headers)

    def _s3_error(self, status: int, code: str, message: str) -> Reply:
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{secrets.token_hex(8).upper()}</RequestId></Error>"
        ).encode()
        return Reply(status, [("Content-Type", "application/xml")], body)

    # -- the hub -------------------------------------------------------------------------
    def _authorized(self, req: _Request) -> bool:
        return self.token is None or req.header("Authorization") == f"Bearer {self.token}"

    def _hub_route(self, req: _Request) -> Reply:
        if not self._authorized(req):
            # What the hub says to anonymous callers of a private (or missing) repo.
            return _error(401, "RepoNotFound", "Invalid username or password.")
        path = req.path
        if path.startswith("/api/resolve-cache/models/"):
            return self._resolve_cache(req, path[len("/api/resolve-cache/models/") :])
        if path.startswith("/api/models/"):
            return self._api(req, path[len("/api/models/") :])
        m = re.fullmatch(r"/([^/]+/[^/]+)/resolve/([^/]+)/(.+)", path)
        if m is None:
            return _error(404, None, "Sorry, we can't find the page you are looking for.")
        repo_id = m.group(1)
        revision = urllib.parse.unquote(m.group(2))
        file_path = urllib.parse.unquote(m.group(3))
        return self._resolve(req, repo_id, revision, file_path)

    def _find(self, repo_id: str, revision: str) -> Commit | Reply:
        if repo_id not in self.repos:
            return _error(404, "RepoNotFound", "Repository not found")
        commit = self.resolve(repo_id, revision)
        if commit is None:
            return _error(404, "RevisionNotFound", f"Invalid rev id: {revision}")
        return commit

    def _resolve(self, req: _Request, repo_id: str, revision: str, file_path: str) -> Reply:
        found = self._find(repo_id, revision)
        if isinstance(found, Reply):
            return found
        commit = found
        entry = commit.files.get(file_path)
        if entry is None:
            return _error(404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", commit.oid)])
        etag = f'"{entry.etag}"'
        common = [("X-Repo-Commit", commit.oid), ("ETag", etag), ("Vary", "Origin")]
        if req.header("If-None-Match") == etag:
            return Reply(304, common)
        if not entry.lfs:
            quoted = urllib.parse.quote(file_path)
            target = (
                f"/api/resolve-cache/models/{repo_id}/{commit.oid}/{quoted}"
                f"?%2F{urllib.parse.quote(repo_id, safe='')}%2Fresolve%2F"
                f"{urllib.parse.quote(revision, safe='')}%2F{urllib.parse.quote(quoted, safe='')}"
                f"=&etag={urllib.parse.quote(etag, safe='')}"
            )
            body = f"Temporary Redirect. Redirecting to {target}".encode()
            return Reply(307, [*common, ("Location", target), ("Content-Type", "text/plain")], body)
        location = self.presign(entry.sha256, file_path.rsplit("/", 1)[-1])
        headers = [
            *common,
            ("Location", location),
            ("X-Linked-Etag", f'"{entry.sha256}"'),
            ("X-Linked-Size", str(len(entry.data))),
            ("Content-Type", "text/plain; charset=utf-8"),
        ]
        if self.xet:
            xet_hash = self._digest("xet", entry.sha256, entry.data)
            auth = f"{self.endpoint}/api/models/{repo_id}/xet-read-token/{commit.oid}"
            headers += [("X-Xet-Hash", xet_hash), ("Link", f'<{auth}>; rel="xet-auth"')]
        return Reply(302, headers, f"Found. Redirecting to {location}".encode())

    def _resolve_cache(self, req: _Request, rest: str) -> Reply:
        m = re.fullmatch(r"([^/]+/[^/]+)/([0-9a-f]{40})/(.+)", rest)
        if m is None:
            return _error(404, None, "Not found")
        found = self._find(m.group(1), m.group(2))
        if isinstance(found, Reply):
            return found
        entry = found.files.get(urllib.parse.unquote(m.group(3)))
        if entry is None or entry.lfs:
            return _error(404, "EntryNotFound", "Entry not found", [("X-Repo-Commit", found.oid)])
        headers = [("X-Repo-Commit", found.oid), ("Content-Type", "text/plain; charset=utf-8")]
        data = self.tampered.get(entry.git_oid, entry.data)
        return _ranged(req, data, f'"{entry.git_oid}"', headers)

    # -- the API -------------------------------------------------------------------------
    def _api(self, req: _Request, rest: str) -> Reply:
        m = re.fullmatch(r"([^/]+/[^/]+)(?:/revision/([^/]+))?", rest)
        if m is not None:
            return self._model_info(req, m.group(1), urllib.parse.unquote(m.group(2) or "main"))
        m = re.fullmatch(r"([^/]+/[^/]+)/tree/([^/]+)(?:/(.+))?", rest)
        if m is not None:
            return self._tree(
                req,
                m.group(1),
                urllib.parse.unquote(m.group(2)),
                urllib.parse.unquote(m.group(3) or "").strip("/"),
            )
        return _error(404, None, "Not found")

    def _model_info(self, req: _Request, repo_id: str, revision: str) -> Reply:
        found = self._find(repo_id, revision)
        if isinstance(found, Reply):
            return found
        blobs = req.query.get("blobs", "").lower() == "true"
        siblings = []
        for path, f in sorted(found.files.items()):
            item: dict[str, object] = {"rfilename": path}
            if blobs:
                item.update(size=len(f.data), blobId=f.git_oid)
                if f.lfs:
                    pointer = len(lfs_pointer(f.data))
                    item["lfs"] = {"sha256": f.sha256, "size": len(f.data), "pointerSize": pointer}
            siblings.append(item)
        owner = repo_id.split("/", 1)[0]
        doc = {
            "_id": hashlib.md5(repo_id.encode(), usedforsecurity=False).hexdigest()[:24],
            "id": repo_id,
            "modelId": repo_id,
            "author": owner,
            "sha": found.oid,
            "lastModified": _iso(found.when),
            "createdAt": _iso(found.when),
            "private": self.repos[repo_id].private,
            "gated": False,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [],
            "siblings": siblings,
            "usedStorage": sum(len(f.data) for f in found.files.values()),
        }
        return Reply(200, [("Content-Type", "application/json"), ("X-Repo-Commit", found.oid)],
                     json.dumps(doc).encode())  # fmt: skip

    def _tree(self, req: _Request, repo_id: str, revision: str, folder: str) -> Reply:
        found = self._find(repo_id, revision)
        if isinstance(found, Reply):
            return found
        recursive = req.query.get("recursive", "").lower() == "true"
        items = self._tree_items(found, folder, recursive)
        if items is None:
            return _error(404, "EntryNotFound", f"{folder} does not exist on {revision}")
        try:
            offset = int(base64.urlsafe_b64decode(req.query.get("cursor", "") + "==") or b"0")
        except ValueError:
            return _error(400, None, "Invalid cursor")
        page = items[offset : offset + self.page_size]
        headers = [("Content-Type", "application/json")]
        if offset + self.page_size < len(items):
            cursor = base64.urlsafe_b64encode(str(offset + self.page_size).encode()).decode()
            query = {k: v for k, v in req.query.items() if k != "cursor"}
            query["cursor"] = cursor.rstrip("=")
            nxt = self.hub.url(req.path + "?" + urllib.parse.urlencode(query))
            headers.append(("Link", f'<{nxt}>; rel="next"'))
        return Reply(200, headers, json.dumps(page).encode())

    def _tree_items(
        self, commit: Commit, folder: str, recursive: bool
    ) -> list[dict[str, object]] | None:
        prefix = folder + "/" if folder else ""
        if folder and not any(p.startswith(prefix) for p in commit.files):
            return None
        dirs: set[str] = set()
        files: list[dict[str, object]] = []
        for path, f in sorted(commit.files.items()):
            if not path.startswith(prefix):
                continue
            rel = path[len(prefix) :]
            parts = rel.split("/")
            for depth in range(1, len(parts)):
                if recursive or depth == 1:
                    dirs.add(prefix + "/".join(parts[:depth]))
            if not recursive and len(parts) > 1:
                continue
            item: dict[str, object] = {
                "type": "file",
                "oid": f.git_oid,
                "size": len(f.data),
                "path": path,
            }
            if f.lfs:
                pointer = len(lfs_pointer(f.data))
                item["lfs"] = {"oid": f.sha256, "size": len(f.data), "pointerSize": pointer}
                if self.xet:
                    item["xetHash"] = self._digest("xet", f.sha256, f.data)
            files.append(item)
        folders: list[dict[str, object]] = [
            {"type": "directory", "oid": _tree_oid(commit.oid, d), "size": 0, "path": d}
            for d in sorted(dirs)
        ]
        return folders + files
