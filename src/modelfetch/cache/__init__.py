"""The on-disk cache: layout.py (every path under the root), store.py (one entry: lookup,
repair, promote), manage.py (list, find, remove, prune, verify), sets.py (split GGUF
sets), snapdir.py (whole-repository snapshot directories), part.py and sidecar.py (an
entry's part file and metadata.json on disk)."""

from .manage import Cache, PruneReport, VerifyResult
from .store import CacheEntry, default_cache_dir

__all__ = ["Cache", "CacheEntry", "PruneReport", "VerifyResult", "default_cache_dir"]
