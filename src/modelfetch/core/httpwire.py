"""HTTP rules without a socket: origins, redirects, statuses, Retry-After, byte ranges.

Everything here is a function of its arguments (the current time included), so the rules
the client and the mirror follow are testable as tables; http_client.py and fetch/ do the
sending.
"""

from __future__ import annotations

import base64
import email.utils
import re
import urllib.parse

from ..errors import DownloadError, InsecureRedirectError
from ..redact import redact_url
from .retry import RetryableError

REDIRECTS = frozenset({301, 302, 303, 307, 308})
MAX_RETRY_AFTER = 86400
# Characters a URL may hold as they are (RFC 3986 reserved + unreserved, and '%').
_URL_SAFE = ":/?#[]@!$&'()*+,;=%~-._"
_RANGE = re.compile(r"^bytes=(\d{0,19})-(\d{0,19})$")

_STATUS_HINTS = {
    401: "the origin wants credentials: pass a bearer token or headers",
    403: "access denied: check the token and that it may read this file",
    404: "not found: check the URL, repo, revision and file name",
    410: "the file is gone from the origin",
}

Origin = tuple[str, str, int]


def origin_of(url: str) -> Origin:
    """(scheme, host, port); raises ValueError for a malformed URL (bad port or brackets)."""
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


def redirect_target(current: str, location: str, status: int) -> str:
    """The absolute URL a redirect points to; DownloadError if its Location is malformed."""
    raw = location.strip()
    # Sloppy servers send raw spaces or bytes above ASCII: send them percent-encoded (as
    # curl does) rather than fail inside http.client. Control characters are no URL at all.
    cleaned = urllib.parse.quote(raw, safe=_URL_SAFE, encoding="latin-1")
    try:
        target = urllib.parse.urljoin(current, cleaned)
        parts = urllib.parse.urlsplit(target)
        valid = parts.scheme.lower() not in ("http", "https") or (
            bool(parts.hostname) and (parts.port is None or parts.port > 0)
        )
    except (ValueError, UnicodeError):
        valid = False
    if not valid or any(ord(c) < 0x20 or ord(c) == 0x7F for c in raw):
        raise DownloadError(
            f"redirect {status} from {redact_url(current)} has a malformed Location header "
            f"({redact_url(raw)[:300]}: bad host, port, brackets or characters); the server "
            "is misconfigured",
            status=status,
        )
    return target


def next_hop(
    current: str,
    location: str | None,
    status: int,
    asked: Origin,
    follow_cross_origin: bool = True,
) -> str | None:
    """Where a redirect answer to a request for ``current`` leads: the URL to ask next, or
    None when the caller wants the redirect itself (a hop to another origin it does not
    follow). Raises for a redirect we refuse: no Location, not http(s), https to http."""
    if not follow_cross_origin and location:
        target = redirect_target(current, location, status)
        if origin_of(target) != asked:
            return None
    if not location:
        raise DownloadError(
            f"redirect {status} without Location from {redact_url(current)}", status=status
        )
    target = redirect_target(current, location, status)
    scheme = urllib.parse.urlsplit(target).scheme.lower()
    if scheme not in ("http", "https"):
        raise InsecureRedirectError(f"refusing redirect to a {scheme[:10]!r} URL")
    if current.lower().startswith("https:") and scheme == "http":
        raise InsecureRedirectError(
            f"refusing redirect from https to http ({redact_url(target)}): it would expose "
            "the download to tampering"
        )
    return target


def split_userinfo(url: str) -> tuple[str, dict[str, str]]:
    """Move ``user:pass@`` out of the URL into a Basic Authorization credential."""
    parts = urllib.parse.urlsplit(url)
    if "@" not in parts.netloc:
        return url, {}
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, _, password = userinfo.partition(":")
    token = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
    header = "Basic " + base64.b64encode(token.encode("utf-8")).decode("ascii")
    clean = urllib.parse.urlunsplit(parts._replace(netloc=hostport))
    return clean, {"Authorization": header}


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (seconds or an HTTP date, relative to
    ``now``, a POSIX time); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(min(int(value[:12]), MAX_RETRY_AFTER))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - now)


def status_error(status: int, display: str, retry_after: float | None) -> Exception:
    """The exception for an unwanted status: retryable for 5xx/408/429, final otherwise."""
    if status == 429 or status == 408 or status >= 500:
        return RetryableError(f"HTTP {status}", retry_after)
    hint = _STATUS_HINTS.get(status, "the origin refused the request")
    return DownloadError(f"HTTP {status} for {display}: {hint}", status=status)


def serve_range(header: str | None, size: int) -> tuple[int, int, int]:
    """(status, first byte, last byte) of the answer to a ``Range`` header on a ``size``-byte
    file: 206 with the bytes asked for, 200 with the whole file, or 416.

    RFC 9110: a header we cannot parse (or several ranges) is ignored, so the answer is the
    whole file; only a well-formed range outside the file is unsatisfiable.
    """
    whole = (200, 0, size - 1)
    match = _RANGE.match(header.strip()) if header else None
    if match is None:
        return whole
    first, last = match.group(1), match.group(2)
    if (not first and not last) or size == 0:
        return 416, 0, -1
    if not first:  # suffix: the last N bytes
        n = int(last)
        return (206, max(0, size - n), size - 1) if n > 0 else (416, 0, -1)
    start = int(first)
    end = int(last) if last else size - 1
    if start >= size or end < start:
        return 416, 0, -1
    return 206, start, min(end, size - 1)
