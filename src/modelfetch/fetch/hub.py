"""What the Hugging Face hub tells us before we download a file, and which commit to use.

A ``HEAD`` on ``{endpoint}/{repo}/resolve/{revision}/{path}`` answers, for a file stored in
LFS/Xet, with a redirect to a presigned CDN URL carrying:

* ``X-Linked-Etag``: the SHA-256 of the file's content; used as the expected hash, so
  every hub download is verified without the caller pinning anything;
* ``X-Linked-Size``: its size;
* ``X-Repo-Commit``: the commit the revision resolved to.

For a small git-stored file it answers with a *relative* redirect to
``/api/resolve-cache/...`` on the hub itself, which we follow; that answer carries the
file's git blob id as its ``ETag`` (``sha1(b"blob <size>\\0" + content)``), its size as
``Content-Length``, and ``X-Repo-Commit``.

Redirects to another origin are not followed for the HEAD: the headers we want are on the
redirect itself, and the credentials must not travel to the CDN anyway.

Once a revision has resolved to a commit, every later request of the same download asks
for ``/resolve/<commit>/...``: a branch that moves meanwhile cannot mix two versions.
"""

from __future__ import annotations

import json
import re
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..cache.part import discard_part
from ..cancel import CancelToken
from ..core.httpwire import parse_retry_after, status_error
from ..errors import DownloadError, IntegrityError
from ..http_client import Response, open_url
from ..redact import redact_url
from ..source import HubFile
from .base import Adopter, FetchResult, Pins, SourceFetcher, credentials_for

if TYPE_CHECKING:
    from ..cache import CacheEntry

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_SHA1 = re.compile(r"^[0-9a-f]{40}$")
MAX_INFO_BYTES = 32 * 1024 * 1024

# X-Error-Code values of the hub, in words a person can act on.
_HUB_ERRORS = {
    "RepoNotFound": "repository not found (or private: pass a token that may read it)",
    "RevisionNotFound": "no such revision (branch, tag or commit) in this repository",
    "EntryNotFound": "no such file at this revision",
    "GatedRepo": "this repository is gated: accept its conditions on the hub, then pass a token",
}


@dataclass(frozen=True)
class HubFileInfo:
    commit: str | None
    sha256: str | None  # only for LFS files: plain git files carry a git blob id instead
    size: int | None
    git_sha1: str | None = None  # a git-stored file's blob id, to check its bytes against


def _normalize_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


def _size(text: str | None) -> int | None:
    text = (text or "").strip()
    return int(text) if text.isdigit() and len(text) <= 19 else None


def parse_hub_headers(headers: dict[str, str], *, final: bool = False) -> HubFileInfo:
    """Pull the hub's metadata out of response headers, distrusting malformed values.

    ``final``: the response is the file itself (not a redirect to it), so for a git-stored
    file its ``ETag`` is the git blob id and its ``Content-Length`` the size.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    commit = (lower.get("x-repo-commit") or "").strip().lower()
    commit_ok = bool(_SHA1.match(commit))
    linked = _normalize_etag(lower.get("x-linked-etag"))
    size = _size(lower.get("x-linked-size"))
    git_sha1 = None
    etag = (lower.get("etag") or "").strip()
    # Only an answer that names its commit (so speaks for the hub), has no LFS identity, and
    # carries a strong 40-hex ETag is describing a git-stored file.
    if final and commit_ok and linked is None and not etag.startswith("W/"):
        candidate = etag.strip('"').lower()
        if _SHA1.match(candidate):
            git_sha1 = candidate
            size = size if size is not None else _size(lower.get("content-length"))
    return HubFileInfo(
        commit=commit if commit_ok else None,
        sha256=linked if linked and _SHA256.match(linked) else None,
        size=size,
        git_sha1=git_sha1,
    )


class HubApiError(DownloadError):
    """The hub refused a request and said why: ``error_code`` is its X-Error-Code."""

    def __init__(self, message: str, *, status: int, error_code: str) -> None:
        super().__init__(message, status=status)
        self.error_code = error_code


def hub_error(resp: Response, url: str) -> Exception:
    """The exception for a refused hub request, worded from the hub's X-Error-Code."""
    code = (resp.header("X-Error-Code") or "").strip()
    if code in _HUB_ERRORS and resp.status < 500:
        return HubApiError(
            f"HTTP {resp.status} for {redact_url(url)}: {_HUB_ERRORS[code]}",
            status=resp.status,
            error_code=code,
        )
    retry_after = parse_retry_after(resp.header("Retry-After"), time.time())
    return status_error(resp.status, redact_url(url), retry_after)


def head_hub_file(
    url: str,
    credentials: dict[str, str],
    connect_timeout: float,
    read_timeout: float,
    cancel: CancelToken | None = None,
) -> HubFileInfo:
    resp = open_url(
        url,
        headers={},
        credentials=credentials,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        method="HEAD",
        follow_cross_origin=False,
        cancel=cancel,
    )
    try:
        if resp.status >= 400:
            raise hub_error(resp, url)
        headers = {k: v for k, v in resp.raw.headers.items()}
        return parse_hub_headers(headers, final=resp.status < 300)
    finally:
        resp.close()


def _api_get(
    url: str,
    creds: Mapping[str, str],
    connect_timeout: float,
    read_timeout: float,
    cancel: CancelToken | None,
) -> tuple[bytes | None, str | None]:
    """One GET of a hub API URL: its body (None if implausibly large) and ``Link`` header."""
    resp = open_url(
        url,
        headers={"Accept": "application/json"},
        credentials=creds,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        cancel=cancel,
    )
    try:
        if resp.status != 200:
            raise hub_error(resp, url)
        body = resp.raw.read(MAX_INFO_BYTES + 1, decode_content=True)
        link = resp.header("Link")
    finally:
        resp.close()
    return (body if len(body) <= MAX_INFO_BYTES else None), link


def get_json(
    url: str,
    creds: Mapping[str, str],
    connect_timeout: float,
    read_timeout: float,
    cancel: CancelToken | None = None,
) -> tuple[Any, str | None]:
    """One GET of a hub API URL: the parsed JSON body and the ``Link`` header."""
    body, link = _api_get(url, creds, connect_timeout, read_timeout, cancel)
    if body is None:
        raise DownloadError(f"the hub's answer from {redact_url(url)} is implausibly large")
    try:
        return json.loads(body.decode("utf-8")), link
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DownloadError(f"the hub sent unreadable JSON from {redact_url(url)}") from None


def resolve_commit(
    endpoint: str,
    repo_id: str,
    revision: str,
    credentials: dict[str, str],
    connect_timeout: float,
    read_timeout: float,
    cancel: CancelToken | None = None,
) -> str:
    """The commit ``revision`` points at now, from the hub's model API (a commit id is
    returned as it is, without a request)."""
    if _SHA1.match(revision):
        return revision
    rev = urllib.parse.quote(revision, safe="")
    url = f"{endpoint.rstrip('/')}/api/models/{repo_id}/revision/{rev}"
    body, _ = _api_get(url, credentials, connect_timeout, read_timeout, cancel)
    try:
        doc = json.loads(body.decode("utf-8")) if body is not None else None
    except (UnicodeDecodeError, ValueError, RecursionError):
        doc = None
    sha = doc.get("sha") if isinstance(doc, dict) else None
    if not isinstance(sha, str) or not _SHA1.match(sha):
        raise DownloadError(f"the hub did not say which commit {revision!r} of {repo_id} is")
    return sha


@dataclass(frozen=True)
class HubFetcher(SourceFetcher[HubFile]):
    """A file of a Hugging Face repo: ask the hub for its SHA-256 (or git blob id) and
    commit first, then download from that commit and verify. ``pins`` is shared by every
    file of one ensure() call; ``adopt`` may take the file from the Hugging Face cache."""

    pins: Pins = field(default_factory=dict)
    adopt: Adopter | None = None

    def fetch(self, directory: Path, conditional: CacheEntry | None = None) -> FetchResult:
        from .http import HttpDownloader, retrying

        source, opts = self.source, self.opts
        creds = credentials_for(source, opts)
        pin = (source.repo_id, source.revision)
        asked = self.pins.get(pin) or (source.revision if _SHA1.match(source.revision) else None)
        url = source.resolve_url(opts.hf_endpoint, asked)
        info = retrying(
            opts,
            self.emitter,
            redact_url(url),
            lambda: head_hub_file(url, creds, opts.connect_timeout, opts.read_timeout, opts.cancel),
        )
        if asked is not None and info.commit not in (None, asked):
            raise DownloadError(
                f"{source.display}: asked the hub for commit {asked}, it answered for {info.commit}"
            )
        self.emitter.described(info)
        if info.commit is not None:
            self.pins[pin] = info.commit
            # Everything from now on asks for this commit: a branch moving meanwhile (pushed
            # to during a long download) can't slip another version into a retry or resume.
            url = source.resolve_url(opts.hf_endpoint, info.commit)
        expected = opts.sha256
        if info.sha256 and expected and info.sha256 != expected:
            raise IntegrityError(
                f"{source.display}: the hub lists SHA-256 {info.sha256}, but {expected} was "
                "pinned; check the revision or the pinned hash"
            )
        expected = expected or info.sha256
        if conditional is not None and expected is not None and conditional.sha256 == expected:
            return FetchResult.unchanged(conditional, commit=info.commit)
        git_sha1 = info.git_sha1
        if opts.git_sha1 is not None and git_sha1 not in (None, opts.git_sha1):
            raise IntegrityError(
                f"{source.display}: the hub names git blob {git_sha1}, but {opts.git_sha1} was "
                "expected (the repository's file list); check the revision"
            )
        git_sha1 = git_sha1 or opts.git_sha1
        name = expected or git_sha1
        if name is not None and self.adopt is not None:
            # The hub named the content: a copy in the hub cache will do.
            adopted = self.adopt(source, directory, name, info.size)
            if adopted is not None:
                return replace(adopted, commit=info.commit)
        downloader = HttpDownloader(
            url, creds, opts.merged(sha256=expected), self.emitter, git_sha1
        )
        result = downloader.fetch(
            directory,
            source.file_name,
            source.cache_key,
            conditional if expected is None else None,
        )
        if info.size is not None and result.size != info.size:
            discard_part(directory, source.file_name)
            raise IntegrityError(
                f"{source.display}: got {result.size} bytes, the hub lists {info.size}"
            )
        if result.not_modified:  # nothing was downloaded, so nothing new was verified
            return replace(result, commit=info.commit)
        # The downloader checked the bytes against git_sha1 (or failed): it may be recorded.
        return replace(result, commit=info.commit, git_sha1=git_sha1)
