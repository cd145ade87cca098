"""ModelSource: where a model file comes from, parsed and validated once.

A source has a *canonical identity* (a string) whose SHA-256 is the cache key, so the same
file asked for in different spellings lands in the same cache entry, and different files
never share one. Everything user-supplied is treated as hostile: the parsers reject
traversal, encoded separators, control characters and over-long input with a message that
never echoes a URL's secrets.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from .errors import InvalidSourceError
from .redact import redact_url

SourceKind = Literal["path", "url", "hf"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"  # what llama.cpp picks when a repo is named without a file
MAX_SOURCE_LENGTH = 8192
MAX_HF_PATH_LENGTH = 1024
MAX_FILE_NAME_LENGTH = 120

_HF_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?$")
_HF_REVISION = re.compile(r"^[A-Za-z0-9._/-]{1,255}$")
_QUANT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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


def _has_control_chars(text: str) -> bool:
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


def _validate_hf_repo_id(repo_id: str) -> None:
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


def _validate_hf_revision(revision: str) -> None:
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


def _validate_hf_file_path(file_path: str) -> None:
    if not file_path:
        raise InvalidSourceError("Hugging Face file path is empty; name the file in the repo")
    if len(file_path) > MAX_HF_PATH_LENGTH:
        raise InvalidSourceError(f"file path is longer than {MAX_HF_PATH_LENGTH} characters")
    if "\\" in file_path:
        raise InvalidSourceError("file path must use '/' separators, not backslashes")
    if _has_control_chars(file_path):
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


def _split_revision(repo_part: str, query_revision: str | None) -> tuple[str, str]:
    """``repo@rev`` (or ``repo`` plus ``?revision=``) -> (repo, revision)."""
    repo, at, at_revision = repo_part.partition("@")
    if at and not at_revision:
        raise InvalidSourceError("empty revision after '@' in hf:// reference")
    if at and query_revision is not None:
        raise InvalidSourceError("give the revision either as '@rev' or '?revision=', not both")
    return repo, query_revision if query_revision is not None else (at_revision or "main")


def _revision_display(revision: str) -> tuple[str, str]:
    """How a revision is written in an hf:// reference: '@rev', or '?revision=' with '/'."""
    if "/" in revision:
        return "", f"?revision={revision}"
    return f"@{revision}", ""


def _canonical_url(url: str) -> tuple[str, str]:
    """Validate an http(s) URL; return (request_url, canonical_identity)."""
    if len(url) > MAX_SOURCE_LENGTH:
        raise InvalidSourceError(f"URL is longer than {MAX_SOURCE_LENGTH} characters")
    if _has_control_chars(url) or " " in url:
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


@dataclass(frozen=True)
class ModelSource:
    """An immutable, validated reference to one model file.

    Build it with :meth:`path`, :meth:`url`, :meth:`huggingface` or :meth:`parse`.
    ``repr`` and ``str`` show the redacted form only.
    """

    kind: SourceKind
    identity: str = field(repr=False)
    file_name: str
    display: str
    local_path: Path | None = field(default=None, repr=False)
    request_url: str | None = field(default=None, repr=False)
    repo_id: str | None = None
    hf_path: str | None = None
    revision: str | None = None
    quant: str | None = None  # hf://owner/repo:Q4_K_M: a file chosen from the repo by tag

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def path(cls, path: str | os.PathLike[str]) -> ModelSource:
        text = os.fspath(path)
        if not text:
            raise InvalidSourceError("local path is empty")
        if "\x00" in text:
            raise InvalidSourceError("local path contains a NUL byte")
        if len(text) > MAX_SOURCE_LENGTH:
            raise InvalidSourceError(f"local path is longer than {MAX_SOURCE_LENGTH} characters")
        resolved = Path(text).expanduser().resolve()
        return cls(
            kind="path",
            identity=f"path:{resolved}",
            file_name=safe_file_name(resolved.name),
            display=str(resolved),
            local_path=resolved,
        )

    @classmethod
    def url(cls, url: str) -> ModelSource:
        request_url, identity = _canonical_url(url)
        raw_name = urllib.parse.unquote(urllib.parse.urlsplit(request_url).path.rsplit("/", 1)[-1])
        return cls(
            kind="url",
            identity=f"url:{identity}",
            file_name=safe_file_name(raw_name),
            display=redact_url(request_url),
            request_url=request_url,
        )

    @classmethod
    def huggingface(cls, repo_id: str, file_path: str, revision: str = "main") -> ModelSource:
        _validate_hf_repo_id(repo_id)
        _validate_hf_revision(revision)
        _validate_hf_file_path(file_path)
        at, query = _revision_display(revision)
        return cls(
            kind="hf",
            identity=f"hf:{repo_id}@{revision}/{file_path}",
            file_name=safe_file_name(file_path.rsplit("/", 1)[-1]),
            display=f"hf://{repo_id}{at}/{file_path}{query}",
            repo_id=repo_id,
            hf_path=file_path,
            revision=revision,
        )

    @classmethod
    def huggingface_quant(
        cls, repo_id: str, quant: str = DEFAULT_QUANT, revision: str = "main"
    ) -> ModelSource:
        """A GGUF file of ``repo_id`` picked by quantisation tag when the file is resolved."""
        _validate_hf_repo_id(repo_id)
        _validate_hf_revision(revision)
        if not _QUANT.match(quant):
            raise InvalidSourceError(
                f"invalid quantisation tag {quant[:70]!r}: use letters, digits, '_', '-', '.'"
            )
        at, query = _revision_display(revision)
        return cls(
            kind="hf",
            identity=f"hfq:{repo_id}@{revision}:{quant.upper()}",
            file_name=safe_file_name(f"{quant}.gguf"),
            display=f"hf://{repo_id}{at}:{quant}{query}",
            repo_id=repo_id,
            revision=revision,
            quant=quant,
        )

    @classmethod
    def parse(cls, text: str) -> ModelSource:
        """Parse a path, ``http(s)://`` URL, ``file://`` URL or ``hf://`` reference."""
        if not isinstance(text, str):
            raise InvalidSourceError(f"source must be a string, not {type(text).__name__}")
        if len(text) > MAX_SOURCE_LENGTH:
            raise InvalidSourceError(f"source is longer than {MAX_SOURCE_LENGTH} characters")
        scheme, sep, _ = text.partition("://")
        if not sep:
            return cls.path(text)
        scheme = scheme.lower()
        if scheme in ("http", "https"):
            return cls.url(text)
        if scheme == "hf":
            return cls._parse_hf(text[len("hf://") :])
        if scheme == "file":
            parts = urllib.parse.urlsplit(text)
            if parts.netloc not in ("", "localhost"):
                raise InvalidSourceError("file:// URLs must name a local file (file:///path)")
            return cls.path(urllib.parse.unquote(parts.path))
        raise InvalidSourceError(
            f"unsupported source scheme {scheme[:20]!r}: use a path, http(s)://, file:// or hf://"
        )

    @classmethod
    def _parse_hf(cls, rest: str) -> ModelSource:
        if _has_control_chars(rest):
            raise InvalidSourceError("hf:// reference contains control characters")
        if "#" in rest:
            raise InvalidSourceError("hf:// references take no '#fragment'")
        body, qmark, query = rest.partition("?")
        query_revision: str | None = None
        if qmark:
            try:
                pairs = urllib.parse.parse_qsl(
                    query, keep_blank_values=True, strict_parsing=True, max_num_fields=4
                )
            except ValueError:
                raise InvalidSourceError(
                    "malformed hf:// query: only '?revision=<rev>' is accepted"
                ) from None
            if len(pairs) != 1 or pairs[0][0] != "revision" or not pairs[0][1]:
                raise InvalidSourceError("hf:// query accepts exactly one 'revision=<rev>'")
            query_revision = pairs[0][1]
        segments = body.split("/")
        if len(segments) == 2:  # hf://owner/repo[@rev][:QUANT]: pick a GGUF by tag
            repo_part, colon, quant = segments[1].partition(":")
            repo, revision = _split_revision(repo_part, query_revision)
            if colon and not quant:
                raise InvalidSourceError("empty quantisation tag after ':'")
            return cls.huggingface_quant(f"{segments[0]}/{repo}", quant or DEFAULT_QUANT, revision)
        if len(segments) < 3:
            raise InvalidSourceError(
                "hf:// reference must look like hf://owner/repo[@revision]/path/to/file "
                "or hf://owner/repo[@revision]:QUANT"
            )
        owner, repo_part = segments[0], segments[1]
        repo, revision = _split_revision(repo_part, query_revision)
        return cls.huggingface(f"{owner}/{repo}", "/".join(segments[2:]), revision)

    @classmethod
    def coerce(cls, source: ModelSource | str | os.PathLike[str]) -> ModelSource:
        if isinstance(source, ModelSource):
            return source
        if isinstance(source, os.PathLike):
            return cls.path(source)
        return cls.parse(source)

    # -- derived values -----------------------------------------------------------------
    @property
    def cache_key(self) -> str:
        """SHA-256 hex digest of the canonical identity."""
        return hashlib.sha256(self.identity.encode("utf-8")).hexdigest()

    @property
    def entry_dir_name(self) -> str:
        stem = self.file_name.rsplit(".", 1)[0] if "." in self.file_name else self.file_name
        stem = stem[:64] or "download"
        return f"{stem}-{self.cache_key[:12]}"

    def resolve_url(self, hf_endpoint: str | None = None, commit: str | None = None) -> str:
        """The URL to request: the URL itself, or the Hugging Face resolve URL (at ``commit``
        instead of the source's revision when the revision was already resolved)."""
        if self.kind == "url":
            assert self.request_url is not None
            return self.request_url
        if self.kind == "hf" and self.hf_path is None:
            raise InvalidSourceError("a quantisation tag must be resolved to a file first")
        if self.kind == "hf":
            endpoint = (hf_endpoint or os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip(
                "/"
            )
            assert self.repo_id and self.hf_path and self.revision
            rev = urllib.parse.quote(commit or self.revision, safe="")
            path = urllib.parse.quote(self.hf_path, safe="/")
            return f"{endpoint}/{self.repo_id}/resolve/{rev}/{path}"
        raise InvalidSourceError("a local path source has no URL")

    def __str__(self) -> str:
        return self.display


@dataclass(frozen=True)
class RepoRef:
    """A whole Hugging Face repository at a revision: ``hf://owner/repo[@revision]``."""

    repo_id: str
    revision: str = "main"

    def __post_init__(self) -> None:
        _validate_hf_repo_id(self.repo_id)
        _validate_hf_revision(self.revision)

    @classmethod
    def parse(cls, text: str) -> RepoRef:
        """``hf://owner/repo``, ``hf://owner/repo@rev``, ``...?revision=refs/pr/1``, or the
        same without ``hf://``. A file path or a ``:QUANT`` tag is refused: that names a file."""
        if not isinstance(text, str):
            raise InvalidSourceError(f"repository must be a string, not {type(text).__name__}")
        if len(text) > MAX_SOURCE_LENGTH or _has_control_chars(text):
            raise InvalidSourceError("repository reference is too long or has control characters")
        rest = text[len("hf://") :] if text.lower().startswith("hf://") else text
        if "://" in rest:
            raise InvalidSourceError("a whole repository is named hf://owner/repo[@revision]")
        body, qmark, query = rest.partition("?")
        query_revision: str | None = None
        if qmark:
            pairs = urllib.parse.parse_qsl(query, keep_blank_values=True, max_num_fields=4)
            if len(pairs) != 1 or pairs[0][0] != "revision" or not pairs[0][1]:
                raise InvalidSourceError("hf:// query accepts exactly one 'revision=<rev>'")
            query_revision = pairs[0][1]
        segments = body.split("/")
        if len(segments) != 2 or ":" in segments[1]:
            raise InvalidSourceError(
                f"{text[:200]!r} names a file, not a repository: use hf://owner/repo[@revision] "
                "to fetch a whole repository"
            )
        repo, revision = _split_revision(segments[1], query_revision)
        return cls(f"{segments[0]}/{repo}", revision)

    @property
    def display(self) -> str:
        at, query = _revision_display(self.revision)
        return f"hf://{self.repo_id}{at}{query}"

    def file(self, path: str, revision: str | None = None) -> ModelSource:
        """One file of the repository (at ``revision``, by default the reference's own)."""
        return ModelSource.huggingface(self.repo_id, path, revision or self.revision)

    def __str__(self) -> str:
        return self.display
