"""Identity: the canonical form of a source, its cache key, and the validators of its parts.

A source has a *canonical identity* (a string) whose SHA-256 is the cache key, so the same
file asked for in different spellings lands in the same cache entry, and different files
never share one. Everything user-supplied is treated as hostile: the validators reject
traversal, encoded separators, control characters and over-long input with a message that
never echoes a URL's secrets. Pure: ModelSource (source.py) builds on these.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from typing import Literal

from ..errors import InvalidSourceError
from ..redact import redact_url

SourceKind = Literal["path", "url", "hf"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp picks when a repo is named without a file
MAX_SOURCE_LENGTH = 8192
MAX_HF_PATH_LENGTH = 1024
MAX_FILE_NAME_LENGTH = 120

_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
QUANT_TAG = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_PERCENT_ESCAPE = re.compile(r"%[0-9A-Fa-f]{2}")
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")

# Query parameters that carry a signature or an expiry rather than naming the resource.
# They are left out of a URL's identity so that a re-signed URL of the same object is still
# a cache hit (and the secret never reaches the cache key's input).
_SIGNING_PARAM_PREFIXES = ("x-amz-", "x-goog-")
_SIGNING_PARAMS = frozenset(
    {
        "signature",
        "expires",
        "key-pair-id",
        "policy",
        "awsaccesskeyid",
        "googleaccessid",
        "sig",
        "se",
        "st",
        "sp",
        "sv",
        "sr",
        "spr",
        "skoid",
        "sktid",
        "skt",
        "ske",
        "sks",
        "skv",
        "token",
        "access_token",
    }
)


def has_control_chars(text: str) -> bool:
    return any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in text)


# Names the cache itself uses inside an entry directory: a model file must not take them.
_RESERVED_NAME = re.compile(r"^metadata\.json$|\.part(\.json)?$")


def safe_file_name(name: str) -> str:
    """A file name that is safe on every filesystem we support, keeping the extension."""
    cleaned = _UNSAFE_NAME_CHARS.sub("_", name).lstrip(".") or "download"
    if len(cleaned) > MAX_FILE_NAME_LENGTH:
        stem, dot, ext = cleaned.rpartition(".")
        if dot and 0 < len(ext) <= 16:
            cleaned = stem[: MAX_FILE_NAME_LENGTH - len(ext) - 1] + "." + ext
        else:
            cleaned = cleaned[:MAX_FILE_NAME_LENGTH]
    if _RESERVED_NAME.search(cleaned):
        cleaned = cleaned[: MAX_FILE_NAME_LENGTH - 1] + "_"
    return cleaned


def validate_hf_repo_id(repo_id: str) -> None:
    parts = repo_id.split("/")
    if len(parts) != 2:
        raise InvalidSourceError(
            f"Hugging Face repo id must be 'owner/name', got {len(parts)} segment(s)"
        )
    for part in parts:
        if not _HF_NAME.match(part) or "--" in part or ".." in part:
            raise InvalidSourceError(
                "invalid Hugging Face repo id segment "
                f"{part[:100]!r}: use letters, digits, '-', '_', '.' (no '--' or '..', "
                "not starting or ending with '-' or '.', at most 96 characters)"
            )


def validate_hf_revision(revision: str) -> None:
    if (
        not _HF_REVISION.match(revision)
        or ".." in revision
        or "//" in revision
        or revision.startswith(("/", "-", "."))
        or revision.endswith(("/", "."))
    ):
        raise InvalidSourceError(
            f"invalid revision {revision[:100]!r}: use a branch, tag or commit made of letters, "
            "digits, '.', '_', '-' and single '/' separators (at most 255 characters)"
        )


def validate_hf_file_path(file_path: str) -> None:
    if not file_path:
        raise InvalidSourceError("Hugging Face file path is empty; name the file in the repo")
    if len(file_path) > MAX_HF_PATH_LENGTH:
        raise InvalidSourceError(f"file path is longer than {MAX_HF_PATH_LENGTH} characters")
    if "\\" in file_path:
        raise InvalidSourceError("file path must use '/' separators, not backslashes")
    if has_control_chars(file_path):
        raise InvalidSourceError("file path contains control characters")
    if _PERCENT_ESCAPE.search(file_path):
        raise InvalidSourceError(
            "hf:// file paths are literal, not percent-encoded: write the file name as it is "
            "in the repo (encoded separators such as %2F are refused)"
        )
    for segment in file_path.split("/"):
        if segment in ("", ".", ".."):
            raise InvalidSourceError(
                "file path must not contain empty, '.' or '..' segments (or start with '/')"
            )


def split_revision(repo_part: str, query_revision: str | None) -> tuple[str, str]:
    """``repo@rev`` (or ``repo`` plus ``?revision=``) -> (repo, revision)."""
    repo, at, at_revision = repo_part.partition("@")
    if at and not at_revision:
        raise InvalidSourceError("empty revision after '@' in hf:// reference")
    if at and query_revision is not None:
        raise InvalidSourceError("give the revision either as '@rev' or '?revision=', not both")
    return repo, query_revision if query_revision is not None else (at_revision or "main")


def revision_display(revision: str) -> tuple[str, str]:
    """How a revision is written in an hf:// reference: '@rev', or '?revision=' with '/'."""
    if "/" in revision:
        return "", f"?revision={revision}"
    return f"@{revision}", ""


def canonical_url(url: str) -> tuple[str, str]:
    """Validate an http(s) URL; return (request_url, canonical_identity)."""
    if len(url) > MAX_SOURCE_LENGTH:
        raise InvalidSourceError(f"URL is longer than {MAX_SOURCE_LENGTH} characters")
    if has_control_chars(url) or " " in url:
        raise InvalidSourceError("URL contains whitespace or control characters")
    if "\\" in url:
        raise InvalidSourceError("URL contains a backslash; use '/' (parsers disagree on '\\')")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidSourceError(f"malformed URL {redact_url(url)}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise InvalidSourceError(f"unsupported URL scheme {scheme[:20]!r}: use http or https")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidSourceError(f"URL has no host: {redact_url(url)}")
    if not host.isascii():
        raise InvalidSourceError("URL host must be ASCII (use its punycode form, 'xn--...')")
    # Non-ASCII in the path is legal to ask for; we percent-encode it for the wire.
    path = urllib.parse.quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
    query = urllib.parse.quote(parts.query, safe="=&%:@!$'()*+,;/?-._~")
    host_text = f"[{host}]" if ":" in host else host
    default_port = 443 if scheme == "https" else 80
    netloc = host_text if port in (None, default_port) else f"{host_text}:{port}"
    userinfo = parts.netloc.rpartition("@")[0] if "@" in parts.netloc else ""
    wire_netloc = f"{userinfo}@{netloc}" if userinfo else netloc
    request_url = urllib.parse.urlunsplit((scheme, wire_netloc, path, query, ""))

    kept = [
        (k, v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
        if not (k.lower() in _SIGNING_PARAMS or k.lower().startswith(_SIGNING_PARAM_PREFIXES))
    ]
    identity_query = urllib.parse.urlencode(sorted(kept))
    identity = urllib.parse.urlunsplit((scheme, netloc, path, identity_query, ""))
    return request_url, identity


def cache_key_of(identity: str) -> str:
    """SHA-256 hex digest of a canonical identity: the entry's key."""
    return hashlib.sha256(identity.encode("utf-8")).hexdigest()


def entry_dir_name_of(file_name: str, cache_key: str) -> str:
    """The entry directory's name: a readable stem and the key's first 12 hex digits."""
    stem = file_name.rsplit(".", 1)[0] if "." in file_name else file_name
    stem = stem[:64] or "download"
    return f"{stem}-{cache_key[:12]}"
