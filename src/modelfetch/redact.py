"""Redaction rules: what of a URL or a header may be shown, logged or stored.

One rule for URLs everywhere: userinfo is dropped, the query string and the fragment are
replaced by a marker. Signed URLs (S3, GCS, Azure SAS, CloudFront) carry their secret in the
query, and we cannot know every provider's parameter names, so no query value is ever shown.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import logging

REDACTED = "<redacted>"

# Header names whose values are secrets. Every header a caller passes is treated as a
# credential for *sending* purposes (see http_client); this list is only about *showing*.
_SECRET_HEADER_WORDS = ("auth", "token", "cookie", "key", "secret", "signature", "session")


def redact_url(url: str) -> str:
    """Return ``url`` with userinfo removed and query/fragment replaced by a marker.

    Never raises: a string that does not parse as a URL is reduced to a marker rather than
    echoed, because it may be a secret pasted in the wrong place.
    """
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return REDACTED
    if not parts.scheme or not parts.netloc:
        return url if "?" not in url and "@" not in url else REDACTED
    host = parts.hostname or ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    query = REDACTED if parts.query else ""
    fragment = REDACTED if parts.fragment else ""
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, fragment))


# C0 controls, DEL, C1 controls, lone surrogates (undecodable bytes of a file name or a
# header, as Python's surrogateescape keeps them), and the Unicode line separators and
# bidirectional overrides that can make a terminal line lie about what it shows.
_UNPRINTABLE = re.compile(
    "[\x00-\x1f\x7f-\x9f\ud800-\udfff\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]"
)


def _escape_char(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with everything a terminal would act on escaped (``\\x1b``, ``\\udcff``...).

    Whatever we print that came from disk or from a server goes through this, so a hostile
    sidecar or header cannot move the cursor, recolour the screen or fake a second line.
    """
    return _UNPRINTABLE.sub(_escape_char, text)


def is_secret_header(name: str) -> bool:
    lowered = name.lower()
    return any(word in lowered for word in _SECRET_HEADER_WORDS)


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    return {k: (REDACTED if is_secret_header(k) else v) for k, v in headers.items()}


_QUERY_IN_TEXT = re.compile(r"\?[^\s\"']*")


class QueryRedactingFilter:
    """Strip query strings from log records of a library we do not control.

    urllib3 logs every request line at DEBUG, query string included; a signed URL's
    signature would land in the user's logs. This filter rewrites the record's arguments.
    (A plain class: logging accepts any object with a ``filter`` method, and not importing
    logging here keeps a cache hit's imports small.)
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _QUERY_IN_TEXT.sub("?" + REDACTED, a) if isinstance(a, str) else a
                for a in record.args
            )
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = _QUERY_IN_TEXT.sub("?" + REDACTED, record.msg)
        return True


def install_log_redaction() -> None:
    import logging

    logger = logging.getLogger("urllib3.connectionpool")
    if not any(isinstance(f, QueryRedactingFilter) for f in logger.filters):
        logger.addFilter(QueryRedactingFilter())
