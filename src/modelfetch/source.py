"""ModelSource: where a model file comes from, parsed and validated once.

The rules (canonical identity, cache key, what a repo id, revision or path may hold) are
pure and live in core/identity.py; this class builds on them, and resolves local paths
against the filesystem.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path

from . import options
from .core.identity import (
    DEFAULT_HF_ENDPOINT,
    DEFAULT_QUANT,
    MAX_SOURCE_LENGTH,
    QUANT_TAG,
    SourceKind,
    cache_key_of,
    canonical_url,
    entry_dir_name_of,
    has_control_chars,
    revision_display,
    safe_file_name,
    split_revision,
    validate_hf_file_path,
    validate_hf_repo_id,
    validate_hf_revision,
)
from .errors import InvalidSourceError
from .redact import redact_url

__all__ = ["DEFAULT_HF_ENDPOINT", "DEFAULT_QUANT", "ModelSource", "SourceKind", "safe_file_name"]


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
        request_url, identity = canonical_url(url)
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
        validate_hf_repo_id(repo_id)
        validate_hf_revision(revision)
        validate_hf_file_path(file_path)
        at, query = revision_display(revision)
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
        validate_hf_repo_id(repo_id)
        validate_hf_revision(revision)
        if not QUANT_TAG.match(quant):
            raise InvalidSourceError(
                f"invalid quantisation tag {quant[:70]!r}: use letters, digits, '_', '-', '.'"
            )
        at, query = revision_display(revision)
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
        if has_control_chars(rest):
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
            repo, revision = split_revision(repo_part, query_revision)
            if colon and not quant:
                raise InvalidSourceError("empty quantisation tag after ':'")
            return cls.huggingface_quant(f"{segments[0]}/{repo}", quant or DEFAULT_QUANT, revision)
        if len(segments) < 3:
            raise InvalidSourceError(
                "hf:// reference must look like hf://owner/repo[@revision]/path/to/file "
                "or hf://owner/repo[@revision]:QUANT"
            )
        owner, repo_part = segments[0], segments[1]
        repo, revision = split_revision(repo_part, query_revision)
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
        return cache_key_of(self.identity)

    @property
    def entry_dir_name(self) -> str:
        return entry_dir_name_of(self.file_name, self.cache_key)

    def resolve_url(self, hf_endpoint: str | None = None, commit: str | None = None) -> str:
        """The URL to request: the URL itself, or the Hugging Face resolve URL (at ``commit``
        instead of the source's revision when the revision was already resolved)."""
        if self.kind == "url":
            assert self.request_url is not None
            return self.request_url
        if self.kind == "hf" and self.hf_path is None:
            raise InvalidSourceError("a quantisation tag must be resolved to a file first")
        if self.kind == "hf":
            endpoint = options.hf_endpoint(hf_endpoint)
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
        validate_hf_repo_id(self.repo_id)
        validate_hf_revision(self.revision)

    @classmethod
    def parse(cls, text: str) -> RepoRef:
        """``hf://owner/repo``, ``hf://owner/repo@rev``, ``...?revision=refs/pr/1``, or the
        same without ``hf://``. A file path or a ``:QUANT`` tag is refused: that names a file."""
        if not isinstance(text, str):
            raise InvalidSourceError(f"repository must be a string, not {type(text).__name__}")
        if len(text) > MAX_SOURCE_LENGTH or has_control_chars(text):
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
        repo, revision = split_revision(segments[1], query_revision)
        return cls(f"{segments[0]}/{repo}", revision)

    @property
    def display(self) -> str:
        at, query = revision_display(self.revision)
        return f"hf://{self.repo_id}{at}{query}"

    def file(self, path: str, revision: str | None = None) -> ModelSource:
        """One file of the repository (at ``revision``, by default the reference's own)."""
        return ModelSource.huggingface(self.repo_id, path, revision or self.revision)

    def __str__(self) -> str:
        return self.display
