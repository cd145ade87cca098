"""ModelSource: where a model file comes from, parsed and validated once.

A source is one of four frozen variants (a tagged union under the common base
ModelSource): PathSource, UrlSource, HubFile and HubTag, each carrying only its own fields;
callers dispatch on the variant. The rules (canonical identity, cache key, what a repo id,
revision or path may hold) are pure and live in core/identity.py; the variants build on
them, and ModelSource.path resolves local paths against the filesystem.
"""

from __future__ import annotations

import os
import urllib.parse
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

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

__all__ = [
    "DEFAULT_HF_ENDPOINT",
    "DEFAULT_QUANT",
    "HubFile",
    "HubSource",
    "HubTag",
    "ModelSource",
    "PathSource",
    "RepoRef",
    "SourceKind",
    "UrlSource",
    "safe_file_name",
]


class ModelSource(ABC):
    """An immutable, validated reference to one model file: one of the variants
    :class:`PathSource`, :class:`UrlSource`, :class:`HubFile` or :class:`HubTag`, each
    carrying only its own fields. Callers dispatch on the variant (``match``/isinstance).

    Build it with :meth:`path`, :meth:`url`, :meth:`huggingface`,
    :meth:`huggingface_quant` or :meth:`parse`. ``repr`` and ``str`` show the redacted form
    only.
    """

    __slots__ = ()

    # "path" | "url" | "hf": the sidecar's source_kind (both hub variants are "hf").
    kind: ClassVar[SourceKind]

    @property
    @abstractmethod
    def identity(self) -> str:
        """The canonical identity: its SHA-256 is the cache key."""

    @property
    @abstractmethod
    def file_name(self) -> str:
        """The name the file gets in its cache entry (safe on every filesystem)."""

    @property
    @abstractmethod
    def display(self) -> str:
        """How the source is shown to people (secrets redacted)."""

    # -- constructors -------------------------------------------------------------------
    @classmethod
    def path(cls, path: str | os.PathLike[str]) -> PathSource:
        text = os.fspath(path)
        if not text:
            raise InvalidSourceError("local path is empty")
        if "\x00" in text:
            raise InvalidSourceError("local path contains a NUL byte")
        if len(text) > MAX_SOURCE_LENGTH:
            raise InvalidSourceError(f"local path is longer than {MAX_SOURCE_LENGTH} characters")
        return PathSource(Path(text).expanduser().resolve())

    @classmethod
    def url(cls, url: str) -> UrlSource:
        return UrlSource(canonical_url(url)[0])

    @classmethod
    def huggingface(cls, repo_id: str, file_path: str, revision: str = "main") -> HubFile:
        return HubFile(repo_id, revision, file_path)

    @classmethod
    def huggingface_quant(
        cls, repo_id: str, quant: str = DEFAULT_QUANT, revision: str = "main"
    ) -> HubTag:
        """A GGUF file of ``repo_id`` picked by quantisation tag when the file is resolved."""
        return HubTag(repo_id, revision, quant)

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

    def __str__(self) -> str:
        return self.display


@dataclass(frozen=True, repr=False)
class PathSource(ModelSource):
    """A local file, by its resolved absolute path."""

    kind: ClassVar[SourceKind] = "path"
    local_path: Path

    def __post_init__(self) -> None:
        if not self.local_path.is_absolute():
            raise InvalidSourceError("a path source needs an absolute path: use ModelSource.path")

    @property
    def identity(self) -> str:
        return f"path:{self.local_path}"

    @property
    def file_name(self) -> str:
        return safe_file_name(self.local_path.name)

    @property
    def display(self) -> str:
        return str(self.local_path)

    def __repr__(self) -> str:
        return f"PathSource({self.display!r})"


@dataclass(frozen=True, repr=False)
class UrlSource(ModelSource):
    """An http(s) URL, as it is requested (credentials in it are never shown)."""

    kind: ClassVar[SourceKind] = "url"
    request_url: str
    # Derived from request_url (signing parameters left out); kept so a lookup need not
    # re-canonicalise.
    _identity: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        request_url, identity = canonical_url(self.request_url)
        if request_url != self.request_url:
            raise InvalidSourceError("not a canonical URL: build it with ModelSource.url")
        object.__setattr__(self, "_identity", f"url:{identity}")

    @property
    def identity(self) -> str:
        return self._identity

    @property
    def file_name(self) -> str:
        path = urllib.parse.urlsplit(self.request_url).path
        return safe_file_name(urllib.parse.unquote(path.rsplit("/", 1)[-1]))

    @property
    def display(self) -> str:
        return redact_url(self.request_url)

    def resolve_url(self, hf_endpoint: str | None = None, commit: str | None = None) -> str:
        """The URL to request: the URL itself."""
        return self.request_url

    def __repr__(self) -> str:
        return f"UrlSource({self.display!r})"


@dataclass(frozen=True)
class HubFile(ModelSource):
    """One file of a Hugging Face repo at a revision: ``hf://owner/repo[@rev]/path``."""

    kind: ClassVar[SourceKind] = "hf"
    repo_id: str
    revision: str
    hf_path: str  # the file's path inside the repo

    def __post_init__(self) -> None:
        validate_hf_repo_id(self.repo_id)
        validate_hf_revision(self.revision)
        validate_hf_file_path(self.hf_path)

    @property
    def identity(self) -> str:
        return f"hf:{self.repo_id}@{self.revision}/{self.hf_path}"

    @property
    def file_name(self) -> str:
        return safe_file_name(self.hf_path.rsplit("/", 1)[-1])

    @property
    def display(self) -> str:
        at, query = revision_display(self.revision)
        return f"hf://{self.repo_id}{at}/{self.hf_path}{query}"

    def resolve_url(self, hf_endpoint: str | None = None, commit: str | None = None) -> str:
        """The hub's resolve URL (at ``commit`` instead of the revision when the revision
        was already resolved)."""
        endpoint = options.hf_endpoint(hf_endpoint)
        rev = urllib.parse.quote(commit or self.revision, safe="")
        path = urllib.parse.quote(self.hf_path, safe="/")
        return f"{endpoint}/{self.repo_id}/resolve/{rev}/{path}"

    def sibling(self, path: str) -> HubFile:
        """Another file of the same repo at the same revision."""
        return HubFile(self.repo_id, self.revision, path)


@dataclass(frozen=True)
class HubTag(ModelSource):
    """A GGUF file of a Hugging Face repo chosen by quantisation tag when it is resolved:
    ``hf://owner/repo[@rev]:QUANT``."""

    kind: ClassVar[SourceKind] = "hf"
    repo_id: str
    revision: str
    quant: str

    def __post_init__(self) -> None:
        validate_hf_repo_id(self.repo_id)
        validate_hf_revision(self.revision)
        if not QUANT_TAG.match(self.quant):
            raise InvalidSourceError(
                f"invalid quantisation tag {self.quant[:70]!r}: use letters, digits, '_', '-', '.'"
            )

    @property
    def identity(self) -> str:
        return f"hfq:{self.repo_id}@{self.revision}:{self.quant.upper()}"

    @property
    def file_name(self) -> str:
        return safe_file_name(f"{self.quant}.gguf")

    @property
    def display(self) -> str:
        at, query = revision_display(self.revision)
        return f"hf://{self.repo_id}{at}:{self.quant}{query}"

    def resolve_url(self, hf_endpoint: str | None = None, commit: str | None = None) -> str:
        raise InvalidSourceError("a quantisation tag must be resolved to a file first")

    def file(self, path: str) -> HubFile:
        """The file the tag resolved to (same repo and revision)."""
        return HubFile(self.repo_id, self.revision, path)


HubSource = HubFile | HubTag  # every source the Hugging Face hub serves


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

    def file(self, path: str, revision: str | None = None) -> HubFile:
        """One file of the repository (at ``revision``, by default the reference's own)."""
        return HubFile(self.repo_id, revision or self.revision, path)

    def __str__(self) -> str:
        return self.display
