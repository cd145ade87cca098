"""EnsureOptions and CachePolicy: everything a caller can tune, validated up front.

This is also the one module that reads environment variables (HF_ENDPOINT, HF_TOKEN,
HF_HUB_OFFLINE, MODELFETCH_*): the small functions at the end are what the others call.
"""

from __future__ import annotations

import enum
import math
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any

from .core.identity import DEFAULT_HF_ENDPOINT
from .errors import InvalidSourceError

if TYPE_CHECKING:  # annotations only: options sits below the I/O primitives
    from .budget import ConnectionBudget
    from .cancel import CancelToken
    from .progress import DownloadWatcher, ProgressCallback


if TYPE_CHECKING:
    from .fetch.tier import RemoteTier

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$")


class CachePolicy(str, enum.Enum):
    PREFER_CACHED = "prefer_cached"  # serve a verified entry; download only on a miss
    REFRESH = "refresh"  # revalidate with the origin; replace atomically if it changed
    CACHE_ONLY = "cache_only"  # never touch the network; miss -> CacheMissError
    NO_CACHE = "no_cache"  # always download, into a transient entry nobody else reuses


@dataclass(frozen=True)
class EnsureOptions:
    cache_dir: str | os.PathLike[str] | None = None
    policy: CachePolicy = CachePolicy.PREFER_CACHED
    sha256: str | None = None
    bearer_token: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] | None = field(default=None, repr=False)
    resume: bool = True
    max_retries: int = 3
    retry_backoff: float = 0.5  # first back-off in seconds; doubles each failure, with jitter
    max_backoff: float = 30.0  # also the cap on a server's Retry-After
    connect_timeout: float = 10.0
    read_timeout: float = 60.0  # silence on a connection before it counts as failed
    # Like curl's --speed-limit/--speed-time: a transfer that receives fewer than
    # low_speed_limit bytes/s over low_speed_time seconds is aborted and retried (each
    # such abort uses up a retry). 0 turns the check off.
    low_speed_limit: int = 1024
    low_speed_time: float = 30.0
    lock_timeout: float | None = None  # None: wait while the holder is alive
    cancel: CancelToken | None = None
    progress: ProgressCallback | None = field(default=None, repr=False)
    hf_endpoint: str | None = None
    connections: int = 8  # most parallel ranged connections for a large file; 1 = one stream
    # Start with one stream and open the other connections only if it delivers less than
    # this many MB/s after a second (a per-connection-limited CDN, not a fast LAN, where one
    # stream with direct I/O is fastest). None: all connections from the start.
    parallel_below_mbps: float | None = 150.0
    # A connection that delivers nothing for this many seconds while others are idle has
    # the rest of its range taken over by an idle connection.
    stall_seconds: float = 5.0
    # Write through O_DIRECT where the filesystem allows it (bench/run.py: on the reference
    # machine buffered writes plus fsync ran at 375 MB/s, direct writes at 1.8 GB/s).
    direct_io: bool = True
    # Shared tier: "s3://bucket/prefix" (default: MODELFETCH_REMOTE) or a RemoteTier, and its
    # endpoint for S3-compatible stores (default: MODELFETCH_S3_ENDPOINT, then AWS's lookup).
    remote: str | RemoteTier | None = None
    remote_endpoint: str | None = None
    # A machine that downloads for the fleet must renew its lease within this many seconds,
    # or another machine takes over; and it publishes its bytes in chunks of this size.
    remote_lease_ttl: float = 10.0
    remote_chunk_size: int = 16 * 1024 * 1024
    shards: bool = True  # a shard of a split GGUF (x-00001-of-00003.gguf) brings them all
    # The Hugging Face hub cache: None reads MODELFETCH_HF_CACHE (unset: adopt verified
    # files from the default hub cache, publish nothing); False: leave it alone; True or a
    # path: also publish hf:// files and whole-repository snapshots into it (hfcache.py).
    hf_cache: bool | str | os.PathLike[str] | None = None
    # Expected git blob id of a git-stored hub file: checked (with its size) before the
    # file enters the cache, as a pinned sha256 is.
    git_sha1: str | None = None
    # Whole repositories (snapshot): files fetched at once, and the most connections all
    # of them may hold together (each file's first one included).
    parallel_files: int = 8
    max_connections: int = 32
    # Set by snapshot(): extra connections shared by all the files of one batch.
    connection_budget: ConnectionBudget | None = field(default=None, repr=False)
    # Set by the mirror: sees the download of the one file asked for (fetch it with
    # shards=False), so clients can be served its bytes while it runs.
    watcher: DownloadWatcher | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "policy", CachePolicy(self.policy))
        if self.sha256 is not None:
            if not isinstance(self.sha256, str) or not _HEX64.match(self.sha256):
                raise InvalidSourceError("sha256 must be 64 hexadecimal characters")
            object.__setattr__(self, "sha256", self.sha256.lower())
        if self.git_sha1 is not None:
            if not isinstance(self.git_sha1, str) or not _HEX40.match(self.git_sha1):
                raise InvalidSourceError("git_sha1 must be 40 hexadecimal characters")
            object.__setattr__(self, "git_sha1", self.git_sha1.lower())
        if self.headers:
            for name, value in self.headers.items():
                if not isinstance(name, str) or not _HEADER_NAME.match(name):
                    raise InvalidSourceError("header names must be HTTP tokens")
                if not isinstance(value, str) or any(c in value for c in "\r\n\x00"):
                    raise InvalidSourceError(
                        f"header {name!r} has a value with CR, LF or NUL (header injection)"
                    )
        if self.bearer_token is not None and any(c in self.bearer_token for c in "\r\n\x00 "):
            raise InvalidSourceError("bearer token must not contain whitespace or control chars")
        if not isinstance(self.max_retries, int) or not 0 <= self.max_retries <= 100:
            raise InvalidSourceError("max_retries must be an integer from 0 to 100")
        if not isinstance(self.connections, int) or not 1 <= self.connections <= 64:
            raise InvalidSourceError("connections must be an integer from 1 to 64")
        if not isinstance(self.parallel_files, int) or not 1 <= self.parallel_files <= 64:
            raise InvalidSourceError("parallel_files must be an integer from 1 to 64")
        if (
            not isinstance(self.max_connections, int)
            or not self.parallel_files <= self.max_connections <= 512
        ):
            raise InvalidSourceError(
                "max_connections must be an integer from parallel_files to 512"
            )
        if self.parallel_below_mbps is not None and (
            not isinstance(self.parallel_below_mbps, (int, float))
            or not math.isfinite(self.parallel_below_mbps)
            or self.parallel_below_mbps < 0
        ):
            raise InvalidSourceError("parallel_below_mbps must be None or a finite number >= 0")
        if (
            not isinstance(self.low_speed_limit, int)
            or isinstance(self.low_speed_limit, bool)
            or not 0 <= self.low_speed_limit <= 2**40
        ):
            raise InvalidSourceError("low_speed_limit must be an integer >= 0 (bytes/s)")
        if (
            not isinstance(self.low_speed_time, (int, float))
            or not math.isfinite(self.low_speed_time)
            or self.low_speed_time <= 0
        ):
            raise InvalidSourceError("low_speed_time must be a finite number > 0 (seconds)")
        if (
            not isinstance(self.stall_seconds, (int, float))
            or not math.isfinite(self.stall_seconds)
            or self.stall_seconds <= 0
        ):
            raise InvalidSourceError("stall_seconds must be a finite number > 0 (seconds)")
        for name in ("retry_backoff", "max_backoff", "connect_timeout", "read_timeout"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise InvalidSourceError(f"{name} must be a finite number >= 0")
        if self.lock_timeout is not None and (
            not math.isfinite(self.lock_timeout) or self.lock_timeout < 0
        ):
            raise InvalidSourceError("lock_timeout must be None or a finite number >= 0")
        self._check_remote()

    def _check_remote(self) -> None:
        if self.remote is not None and not isinstance(self.remote, str):
            # A RemoteTier instance means its module is loaded: look it up rather than
            # import it (options sits below fetch/, and must stay cheap to make).
            tier = sys.modules.get("modelfetch.fetch.tier")
            if tier is None or not isinstance(self.remote, tier.RemoteTier):
                raise InvalidSourceError("remote must be an s3://bucket/prefix URL or a RemoteTier")
        ttl = self.remote_lease_ttl
        if not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or not 1 <= ttl <= 600:
            raise InvalidSourceError("remote_lease_ttl must be a number of seconds from 1 to 600")
        size = self.remote_chunk_size
        if not isinstance(size, int) or isinstance(size, bool) or not 2**16 <= size <= 2**30:
            raise InvalidSourceError("remote_chunk_size must be an integer from 64 KiB to 1 GiB")

    def merged(self, **overrides: Any) -> EnsureOptions:
        known = {f.name for f in fields(self)}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown option(s): {', '.join(sorted(unknown))}")
        return replace(self, **overrides)


# -- the environment ------------------------------------------------------------------------
def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def env_cache_dir() -> str | None:
    """MODELFETCH_CACHE_DIR, the cache root when none is passed."""
    return _env("MODELFETCH_CACHE_DIR")


def hf_endpoint(explicit: str | None = None) -> str:
    """The hub to talk to: ``explicit``, else HF_ENDPOINT, else huggingface.co."""
    return (explicit or _env("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def env_hf_token() -> str | None:
    """HF_TOKEN, sent to the hub when no bearer token is passed."""
    return _env("HF_TOKEN")


def env_remote() -> str | None:
    """MODELFETCH_REMOTE, the shared tier (s3://bucket/prefix) when none is passed."""
    return _env("MODELFETCH_REMOTE")


def env_s3_endpoint() -> str | None:
    """MODELFETCH_S3_ENDPOINT, the shared tier's endpoint for S3-compatible stores."""
    return _env("MODELFETCH_S3_ENDPOINT")


def env_offline(hub: bool) -> bool:
    """MODELFETCH_OFFLINE makes every call cache-only; HF_HUB_OFFLINE does so for hf://."""
    return _truthy("MODELFETCH_OFFLINE") or (hub and _truthy("HF_HUB_OFFLINE"))


def env_hub_cache() -> str | None:
    """HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE (huggingface_hub's legacy name)."""
    return _env("HF_HUB_CACHE") or _env("HUGGINGFACE_HUB_CACHE")


def env_hf_home() -> str:
    """HF_HOME, defaulting as huggingface_hub does to $XDG_CACHE_HOME/huggingface or
    ~/.cache/huggingface."""
    cache = _env("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return _env("HF_HOME") or os.path.join(cache, "huggingface")


def env_hf_cache_setting() -> str | None:
    """MODELFETCH_HF_CACHE, what to do with the Hugging Face cache when nothing is passed
    (unset or blank: None)."""
    value = os.environ.get("MODELFETCH_HF_CACHE")
    return value.strip() if value is not None and value.strip() else None
