"""Bring a local file into the cache: a streamed copy into the part file, hashed as it goes."""

from __future__ import annotations

import errno
import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache.part import part_paths
from ..cancel import CancelToken
from ..errors import CancelledError, DownloadError, IntegrityError, storage_error
from ..fsutil import clear_squatter, unlink_quiet
from ..progress import ProgressEmitter
from .engine import CHUNK

if TYPE_CHECKING:
    from ..cache import CacheEntry
from ..source import PathSource
from .base import FetchResult, SourceFetcher


class LocalFetcher(SourceFetcher[PathSource]):
    """A local path: copied into the part file (never resumed: a copy is quick)."""

    def fetch(self, directory: Path, conditional: CacheEntry | None = None) -> FetchResult:
        part, _ = part_paths(directory, self.source.file_name)
        return import_local_file(
            self.source.local_path, part, self.opts.sha256, self.emitter, self.opts.cancel
        )


def import_local_file(
    src: Path,
    part: Path,
    expected_sha256: str | None,
    emitter: ProgressEmitter,
    cancel: CancelToken | None,
) -> FetchResult:
    try:
        fin = open(src, "rb", buffering=0)  # noqa: SIM115 - closed below, with the output
    except OSError as exc:
        raise DownloadError(f"cannot read local file {src}: {exc.strerror or exc}") from None
    hasher = hashlib.sha256()
    done = 0
    with fin:
        try:
            total = os.fstat(fin.fileno()).st_size
            clear_squatter(part)
            flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            fd = os.open(part, flags, 0o644)
        except OSError as exc:
            raise storage_error(exc, part) from None
        try:
            emitter.emit("start", 0, total)
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while True:
                if cancel is not None:
                    cancel.check()
                try:
                    n = fin.readinto(view)
                except OSError as exc:
                    raise DownloadError(f"copying {src} failed: {exc.strerror or exc}") from None
                if not n:
                    break
                _write_all(fd, view[:n], part)
                hasher.update(view[:n])
                done += n
                emitter.bytes(done, total)
            try:
                os.fsync(fd)
            except OSError as exc:
                raise storage_error(exc, part) from None
        except BaseException as exc:
            if not isinstance(exc, CancelledError):
                unlink_quiet(part)  # a copy is never resumed: give the space back
            raise
        finally:
            os.close(fd)
    digest = hasher.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        unlink_quiet(part)
        raise IntegrityError(
            f"SHA-256 mismatch for {src}: expected {expected_sha256}, got {digest}"
        )
    emitter.bytes(done, done, force=True)
    return FetchResult(digest, done, None, None)


def _write_all(fd: int, data: memoryview, part: Path) -> None:
    try:
        while data:
            written = os.write(fd, data)
            if written <= 0:  # never for a regular file; refuse to spin if it happens
                raise OSError(errno.EIO, "write made no progress", str(part))
            data = data[written:]
    except OSError as exc:
        raise storage_error(exc, part) from None
