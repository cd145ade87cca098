"""Bring a local file into the cache: a streamed copy into the part file, hashed as it goes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from .cancel import CancelToken
from .download import FetchResult
from .errors import DownloadError, IntegrityError
from .fsutil import unlink_quiet
from .progress import ProgressEmitter
from .transfer import CHUNK


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
    unlink_quiet(part)
    try:
        total = os.fstat(fin.fileno()).st_size
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
        with fin, os.fdopen(os.open(part, flags, 0o644), "wb") as fout:
            emitter.emit("start", 0, total)
            buf = bytearray(CHUNK)
            view = memoryview(buf)
            while n := fin.readinto(view):
                if cancel is not None:
                    cancel.check()
                fout.write(view[:n])
                hasher.update(view[:n])
                done += n
                emitter.bytes(done, total)
            fout.flush()
            os.fsync(fout.fileno())
    except OSError as exc:
        raise DownloadError(f"copying {src} failed: {exc.strerror or exc}") from None
    digest = hasher.hexdigest()
    if expected_sha256 and digest != expected_sha256:
        unlink_quiet(part)
        raise IntegrityError(
            f"SHA-256 mismatch for {src}: expected {expected_sha256}, got {digest}"
        )
    emitter.bytes(done, done, force=True)
    return FetchResult(digest, done, None, None)
