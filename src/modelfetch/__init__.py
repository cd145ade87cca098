"""modelfetch: fast, verified, crash-safe model downloads and a cache you can trust."""

from ._version import __version__
from .cache import Cache, CacheEntry, PruneReport, VerifyResult, default_cache_dir
from .cancel import CancelToken
from .ensure import ensure, ensure_async
from .errors import (
    CacheMissError,
    CacheStorageError,
    CancelledError,
    CorruptCacheError,
    DiskFullError,
    DownloadError,
    InsecureRedirectError,
    IntegrityError,
    InvalidSourceError,
    LockTimeoutError,
    ModelFetchError,
    ReadOnlyCacheError,
)
from .options import CachePolicy, EnsureOptions
from .progress import ProgressEvent
from .snapshot import Snapshot, SnapshotFile, snapshot, snapshot_async
from .source import ModelSource, RepoRef

__all__ = [
    "Cache",
    "CacheEntry",
    "CacheMissError",
    "CachePolicy",
    "CacheStorageError",
    "CancelToken",
    "CancelledError",
    "CorruptCacheError",
    "DiskFullError",
    "DownloadError",
    "EnsureOptions",
    "InsecureRedirectError",
    "IntegrityError",
    "InvalidSourceError",
    "LockTimeoutError",
    "ModelFetchError",
    "ModelSource",
    "ProgressEvent",
    "PruneReport",
    "ReadOnlyCacheError",
    "RepoRef",
    "Snapshot",
    "SnapshotFile",
    "VerifyResult",
    "__version__",
    "default_cache_dir",
    "ensure",
    "ensure_async",
    "snapshot",
    "snapshot_async",
]
