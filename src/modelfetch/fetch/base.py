"""The Fetcher protocol: one fetcher per kind of origin, chosen by ``fetcher_for``.

A fetcher fills ``<entry>/<name>.part`` with a verified copy of its source and says what
it got (FetchResult); promoting the part into the cache is the cache's job. ensure() only
picks the fetcher, it never asks what kind of source it holds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Generic, Protocol, TypeVar

from ..core.sidecar import EntryRecord
from ..errors import InvalidSourceError
from ..options import env_hf_token
from ..source import HubFile, HubTag, ModelSource, PathSource, UrlSource

if TYPE_CHECKING:
    from ..cache import CacheEntry
    from ..options import EnsureOptions
    from ..progress import ProgressEmitter

# (repo id, revision) -> the commit it resolved to, for the rest of one ensure() call: the
# shards of a split model, and the file a quantisation tag picked, all come from one commit.
Pins = dict[tuple[str, str], str]


@dataclass(frozen=True)
class FetchResult(EntryRecord):
    """What a fetcher got: the part's EntryRecord (``git_sha1`` only when the bytes were
    checked against it), or ``not_modified``: the cached entry is current."""

    not_modified: bool = False

    @classmethod
    def unchanged(cls, entry: CacheEntry, commit: str | None = None) -> FetchResult:
        """The origin confirmed the cached ``entry`` is current: nothing was downloaded."""
        record = {f.name: getattr(entry, f.name) for f in fields(EntryRecord)}
        return cls(**{**record, "commit": commit, "git_sha1": None}, not_modified=True)


# Takes a hub file from elsewhere on this machine (the Hugging Face cache) instead of the
# network: (source, entry directory, content name or None, size or None) -> result or None.
Adopter = Callable[[HubFile, Path, "str | None", "int | None"], "FetchResult | None"]


def credentials_for(source: ModelSource, opts: EnsureOptions) -> dict[str, str]:
    """Headers that must reach only the asked origin (http_client enforces the scoping)."""
    creds = dict(opts.headers or {})
    token = opts.bearer_token
    if token is None and isinstance(source, HubFile | HubTag):
        token = env_hf_token()
    if token:
        creds["Authorization"] = f"Bearer {token}"
    return creds


class Fetcher(Protocol):
    def fetch(self, directory: Path, conditional: CacheEntry | None = None) -> FetchResult:
        """Fill the part file in ``directory``; with ``conditional`` (the cached entry), an
        origin that confirms it is current yields ``FetchResult.unchanged``."""
        ...


S = TypeVar("S", bound=ModelSource)


@dataclass(frozen=True)
class SourceFetcher(Generic[S]):
    """What every fetcher holds: its source (the variant it fetches), the caller's
    options, where events go."""

    source: S
    opts: EnsureOptions
    emitter: ProgressEmitter


def fetcher_for(
    source: ModelSource,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
    pins: Pins | None = None,
    adopt: Adopter | None = None,
) -> Fetcher:
    """The fetcher for ``source``'s variant (imported here, not at module level: a cache
    hit must not load the network stack)."""
    match source:
        case PathSource():
            from .local import LocalFetcher

            return LocalFetcher(source, opts, emitter)
        case HubFile():
            from .hub import HubFetcher

            return HubFetcher(source, opts, emitter, pins if pins is not None else {}, adopt)
        case UrlSource():
            from .http import UrlFetcher

            return UrlFetcher(source, opts, emitter)
        case HubTag():
            raise InvalidSourceError("a quantisation tag must be resolved to a file first")
    raise InvalidSourceError(f"no fetcher for a {type(source).__name__}")
