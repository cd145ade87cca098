"""What the Hugging Face resolve endpoint tells us before we download a file.

A ``HEAD`` on ``{endpoint}/{repo}/resolve/{revision}/{path}`` answers (on the redirect to
the CDN, for files stored in LFS/Xet) with:

* ``X-Linked-Etag``: the SHA-256 of an LFS file's content; used as the expected hash, so
  every hub download is verified without the caller pinning anything;
* ``X-Linked-Size``: its size;
* ``X-Repo-Commit``: the commit the revision resolved to; recorded in the sidecar.

Redirects to another origin are not followed for the HEAD: the headers we want are on the
redirect itself, and the credentials must not travel to the CDN anyway.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .http_client import open_url
from .redact import redact_url

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_COMMIT = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class HubFileInfo:
    commit: str | None
    sha256: str | None  # only for LFS files: plain git files carry a git blob id instead
    size: int | None


def _normalize_etag(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"').lower() or None


def parse_hub_headers(headers: dict[str, str]) -> HubFileInfo:
    """Pull the hub's metadata out of response headers, distrusting malformed values."""
    lower = {k.lower(): v for k, v in headers.items()}
    commit = (lower.get("x-repo-commit") or "").strip().lower()
    linked = _normalize_etag(lower.get("x-linked-etag"))
    size_text = (lower.get("x-linked-size") or "").strip()
    size = int(size_text) if size_text.isdigit() and len(size_text) <= 19 else None
    return HubFileInfo(
        commit=commit if _COMMIT.match(commit) else None,
        sha256=linked if linked and _SHA256.match(linked) else None,
        size=size,
    )


def head_hub_file(
    url: str, credentials: dict[str, str], connect_timeout: float, read_timeout: float
) -> HubFileInfo:
    resp = open_url(
        url,
        headers={},
        credentials=credentials,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        method="HEAD",
        follow_cross_origin=False,
    )
    try:
        if resp.status >= 400:
            from .download import status_error

            raise status_error(resp.status, redact_url(url), resp.header("Retry-After"))
        return parse_hub_headers({k: v for k, v in resp.raw.headers.items()})
    finally:
        resp.close()
