"""The one exception hierarchy of modelfetch.

Every message is meant to be shown to a person as-is: it says what went wrong and what to
do next, and it never contains a credential or a URL query string (callers build messages
from redacted values only).
"""

from __future__ import annotations


class ModelFetchError(Exception):
    """Base class of every error modelfetch raises on purpose."""


class InvalidSourceError(ModelFetchError, ValueError):
    """A source string or argument is malformed or unsafe."""


class CacheMissError(ModelFetchError):
    """The cache holds no valid entry and the policy forbids the network (cache-only)."""


class IntegrityError(ModelFetchError):
    """Downloaded or cached bytes do not match the expected size or SHA-256."""


class DownloadError(ModelFetchError):
    """The origin could not deliver the file (after retries, where retrying made sense)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class InsecureRedirectError(DownloadError):
    """The origin redirected somewhere modelfetch refuses to follow (https->http, loops)."""


class CancelledError(ModelFetchError):
    """The caller's cancel token fired; partial data is kept for a later resume."""


class LockTimeoutError(ModelFetchError):
    """Another thread or process held the entry lock for longer than lock_timeout."""


class CorruptCacheError(ModelFetchError):
    """A cache file on disk is malformed or unsafe (used internally; recovered where possible)."""
