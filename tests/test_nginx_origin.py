"""The same guarantees against nginx: real ETag, Last-Modified, Range and If-Range semantics."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from devtools.genmodel import random_bytes
from devtools.nginx import Nginx
from modelfetch import CancelledError, CancelToken, EnsureOptions, ProgressEvent, ensure

from .conftest import sha256_of


def _publish(root: Path, name: str, data: bytes) -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_download_records_nginx_validators(
    nginx: Nginx, nginx_root: Path, opts: EnsureOptions
) -> None:
    data = random_bytes(1_000_000, seed=11)
    _publish(nginx_root, "a/model.gguf", data)
    entry = ensure(nginx.url("a/model.gguf"), opts)
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)
    assert entry.etag and entry.etag.startswith('"') and entry.last_modified


def _interrupt(url: str, opts: EnsureOptions, after: int) -> None:
    token = CancelToken()

    def stop(event: ProgressEvent) -> None:
        if event.kind == "progress" and event.bytes_done >= after:
            token.cancel()

    with pytest.raises(CancelledError):
        ensure(url, opts, cancel=token, progress=stop)


def test_resume_against_nginx(nginx: Nginx, nginx_root: Path, opts: EnsureOptions) -> None:
    data = random_bytes(3_000_000, seed=12)
    _publish(nginx_root, "slow/resume.gguf", data)
    url = nginx.url("slow/resume.gguf")
    _interrupt(url, opts, 500_000)
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, progress=events.append)
    starts = [e for e in events if e.kind == "start"]
    assert len(starts) == 1 and starts[0].bytes_done >= 500_000  # it resumed, not restarted
    assert entry.sha256 == hashlib.sha256(data).hexdigest() == sha256_of(entry.path)


def test_file_changed_on_nginx_between_attempts(
    nginx: Nginx, nginx_root: Path, opts: EnsureOptions
) -> None:
    old = random_bytes(3_000_000, seed=13)
    _publish(nginx_root, "slow/changing.gguf", old)
    url = nginx.url("slow/changing.gguf")
    _interrupt(url, opts, 500_000)
    new = random_bytes(2_000_000, seed=14)
    _publish(nginx_root, "slow/changing.gguf", new)  # new ETag: If-Range makes nginx send 200
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, progress=events.append)
    assert entry.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(entry.path)
    assert "restart" in [e.kind for e in events]


def test_refresh_against_nginx(nginx: Nginx, nginx_root: Path, opts: EnsureOptions) -> None:
    first = random_bytes(500_000, seed=15)
    _publish(nginx_root, "r/model.gguf", first)
    url = nginx.url("r/model.gguf")
    entry = ensure(url, opts)
    events: list[ProgressEvent] = []
    same = ensure(url, opts, policy="refresh", progress=events.append)
    assert "not_modified" in [e.kind for e in events] and same.sha256 == entry.sha256
    second = random_bytes(600_000, seed=16)
    _publish(nginx_root, "r/model.gguf", second)
    os.utime(nginx_root / "r/model.gguf", (1_800_000_000, 1_800_000_000))
    changed = ensure(url, opts, policy="refresh")
    assert changed.sha256 == hashlib.sha256(second).hexdigest() == sha256_of(changed.path)


def test_nginx_404_is_clear(nginx: Nginx, opts: EnsureOptions) -> None:
    from modelfetch import DownloadError

    with pytest.raises(DownloadError, match="404"):
        ensure(nginx.url("nope/missing.gguf"), opts)
