"""The write paths and the async API: O_DIRECT where the filesystem allows it, plain
writes where it does not (tmpfs), and ensure_async with task cancellation."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path

import pytest

import modelfetch.fetch.http as download_mod
from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import EnsureOptions, ProgressEvent, ensure, ensure_async

from .conftest import part_progress, sha256_of

MiB = 1024 * 1024


def test_cache_on_tmpfs_falls_back_to_plain_writes(server: FaultServer) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm on this machine")
    data = random_bytes(24 * MiB + 123, seed=51)  # unaligned tail on purpose
    url = server.add("/t/model.gguf", Resource(data, drop_after=[5 * MiB + 7]))
    with tempfile.TemporaryDirectory(dir=shm) as tmp:
        direct_fd = download_mod.open_direct(Path(tmp) / "probe")
        assert direct_fd is None  # tmpfs refuses O_DIRECT: the fallback is what runs here
        entry = ensure(url, cache_dir=tmp, retry_backoff=0.01)
        assert sha256_of(entry.path) == entry.sha256
        assert entry.path.read_bytes() == data


@pytest.mark.parametrize("direct", [True, False])
def test_single_stream_resume_with_and_without_direct_io(
    direct: bool,
    server: FaultServer,
    opts: EnsureOptions,
    cache_dir: Path,
) -> None:
    data = random_bytes(20 * MiB + 4095, seed=52)
    url = server.add("/d/model.gguf", Resource(data, drop_after=[9 * MiB + 1]))
    with pytest.raises(Exception):
        ensure(url, opts, max_retries=0, connections=1, direct_io=direct)
    # Bytes buffered when the connection died are written the plain way, so nothing
    # received is lost, with or without O_DIRECT.
    kept = part_progress(cache_dir, url)
    assert kept == 9 * MiB + 1
    entry = ensure(url, opts, connections=1, direct_io=direct)
    assert entry.path.read_bytes() == data
    last = server.requests_for("/d/model.gguf")[-1].headers["Range"]
    assert last == f"bytes={kept}-"  # one stream: an open-ended range from the checkpoint


def test_ensure_async_and_task_cancellation(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str, cache_dir: Path
) -> None:
    fast = server.add("/a/fast.gguf", Resource(blob))
    slow = server.add("/a/slow.gguf", Resource(blob, chunk=16 * 1024, delay_per_chunk=0.02))

    async def scenario() -> None:
        entry = await ensure_async(fast, opts)
        assert entry.sha256 == blob_sha
        started = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_event(event: ProgressEvent) -> None:
            if event.kind == "progress" and event.bytes_done > 100_000:
                loop.call_soon_threadsafe(started.set)

        task = asyncio.ensure_future(ensure_async(slow, opts, progress=on_event))
        await asyncio.wait_for(started.wait(), timeout=20)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())  # returns once the worker thread has finished too
    # The worker saw the token, stopped, and kept its partial data for a resume.
    assert 0 < part_progress(cache_dir, slow) < len(blob)
    resumed = ensure(slow, opts)
    assert resumed.sha256 == blob_sha
    assert server.requests_for("/a/slow.gguf")[-1].headers["Range"].startswith("bytes=")
