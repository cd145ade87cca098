"""One download per entry across threads and processes; crashes never wedge an entry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import (
    CancelledError,
    CancelToken,
    EnsureOptions,
    LockTimeoutError,
    ProgressEvent,
    ensure,
)

from .conftest import part_progress, sha256_of

CHILD = Path(__file__).with_name("child_fetch.py")
ROOT = Path(__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what or condition}")


def test_threads_share_one_download(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    gate = threading.Event()
    url = server.add("/t/model.gguf", Resource(blob, gate=gate))
    waiting = threading.Semaphore(0)
    results: list[Path] = []
    errors: list[BaseException] = []

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "waiting":
            waiting.release()

    def worker() -> None:
        try:
            results.append(ensure(url, opts, progress=on_event).path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for _ in range(7):  # everyone but the holder reports that it waits
        assert waiting.acquire(timeout=20)
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(results) == 8 and len(set(results)) == 1
    assert len(server.requests_for("/t/model.gguf")) == 1
    assert sha256_of(results[0]) == blob_sha


def test_different_entries_download_in_parallel(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    gate = threading.Event()
    urls = [server.add(f"/p/{i}.gguf", Resource(blob, gate=gate)) for i in range(2)]
    threads = [threading.Thread(target=ensure, args=(u, opts)) for u in urls]
    for t in threads:
        t.start()
    # Both requests reach the origin while neither body has been released.
    wait_for(lambda: len([r for r in server.log if r.path.startswith("/p/")]) == 2, what="2 GETs")
    gate.set()
    for t in threads:
        t.join(timeout=30)
    assert all(not t.is_alive() for t in threads)


def _spawn(url: str, cache_dir: Path, markers: Path, tag: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(CHILD), url, str(cache_dir), str(markers), tag],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_four_processes_one_download(
    server: FaultServer, cache_dir: Path, tmp_path: Path, blob: bytes, blob_sha: str
) -> None:
    gate = threading.Event()
    url = server.add("/mp/model.gguf", Resource(blob, gate=gate))
    markers = tmp_path / "markers"
    markers.mkdir()
    procs = [_spawn(url, cache_dir, markers, f"p{i}") for i in range(4)]
    try:
        wait_for(
            lambda: (
                len(list(markers.glob("*.waiting"))) == 3
                and len(server.requests_for("/mp/model.gguf")) == 1
            ),
            what="one holder and three waiting processes",
        )
        gate.set()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        gate.set()
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0, 0, 0], [o[1] for o in outputs]
    reports = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    assert {r["sha256"] for r in reports} == {blob_sha}
    assert len({r["path"] for r in reports}) == 1
    assert len(server.requests_for("/mp/model.gguf")) == 1
    assert len(list(markers.glob("*.start"))) == 1  # exactly one process transferred bytes


def test_kill_9_mid_download_then_resume(
    server: FaultServer, cache_dir: Path, tmp_path: Path, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob, chunk=16 * 1024, delay_per_chunk=0.02)  # ~0.8 MB/s
    url = server.add("/k/model.gguf", res)
    markers = tmp_path / "m"
    markers.mkdir()
    proc = _spawn(url, cache_dir, markers, "victim")
    try:
        wait_for(lambda: part_progress(cache_dir, url) > 300_000, what="a checkpoint on disk")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    kept = part_progress(cache_dir, url)
    assert 0 < kept < len(blob)
    res.delay_per_chunk = 0
    # The dead process's lock must not block us (lock_timeout turns a hang into a failure).
    entry = ensure(url, cache_dir=cache_dir, lock_timeout=10)
    assert entry.sha256 == blob_sha == sha256_of(entry.path)
    last = server.requests_for("/k/model.gguf")[-1].headers
    assert last["Range"] == f"bytes={kept}-{len(blob) - 1}" and last["If-Range"] == res.etag


def test_cancelling_a_waiter_leaves_the_holder_alone(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    gate = threading.Event()
    url = server.add("/c/model.gguf", Resource(blob, gate=gate))
    holder_result: list[str] = []
    holder = threading.Thread(target=lambda: holder_result.append(ensure(url, opts).sha256))
    holder.start()
    wait_for(lambda: len(server.requests_for("/c/model.gguf")) == 1, what="holder's GET")
    token = CancelToken()
    waiting = threading.Event()

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "waiting":
            waiting.set()

    waiter_error: list[BaseException] = []

    def waiter() -> None:
        try:
            ensure(url, opts, cancel=token, progress=on_event)
        except BaseException as exc:
            waiter_error.append(exc)

    w = threading.Thread(target=waiter)
    w.start()
    assert waiting.wait(timeout=20)
    token.cancel()
    w.join(timeout=20)
    assert len(waiter_error) == 1 and isinstance(waiter_error[0], CancelledError)
    gate.set()
    holder.join(timeout=30)
    assert holder_result == [blob_sha]


def test_lock_timeout_reports_a_live_holder(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    gate = threading.Event()
    url = server.add("/l/model.gguf", Resource(blob, gate=gate))
    holder = threading.Thread(target=ensure, args=(url, opts))
    holder.start()
    try:
        wait_for(lambda: len(server.requests_for("/l/model.gguf")) == 1, what="holder's GET")
        with pytest.raises(LockTimeoutError, match="still running"):
            ensure(url, opts, lock_timeout=0.3)
    finally:
        gate.set()
        holder.join(timeout=30)
