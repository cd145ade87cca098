"""Downloads are bounded in time and prompt to cancel: a server that drips or goes silent
cannot hold a download (or a Ctrl-C) for long, and bad redirects are one clear error."""

from __future__ import annotations

import _thread
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

import modelfetch
from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import (
    CancelledError,
    CancelToken,
    DownloadError,
    EnsureOptions,
    InvalidSourceError,
    ProgressEvent,
    ensure,
)
from modelfetch.core.segments import MAX_PIECE

from .conftest import part_progress, sha256_of

MiB = 1024 * 1024
PATH = "/slow/model.gguf"
PROMPT = 10.0  # seconds; what a stop takes is well under one (the origins wait 60)
ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = Path(modelfetch.__file__).resolve().parents[1]


def wait_for(condition: Callable[[], bool], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "modelfetch", *args]


def cli_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), str(ROOT)])}


@pytest.fixture(scope="module")
def big() -> bytes:
    return random_bytes(32 * MiB, seed=41)


# -- cancellation ---------------------------------------------------------------------------
SILENCES = {
    # name: (resource options, ensure options, bytes that arrive before the silence)
    "before-headers": ({"stall_headers": True}, {}, 0),
    "mid-body": ({"stall_after": 700_000}, {"connections": 1}, 700_000),
    "mid-body-parallel": (
        {"stall_after": 3 * MiB},
        {"connections": 4, "parallel_below_mbps": None},
        4 * 3 * MiB,
    ),
    "drip": ({"drip_after": 700_000, "drip_interval": 0.05}, {"connections": 1}, 700_000),
}


@pytest.mark.parametrize("silence", sorted(SILENCES))
def test_cancel_token_stops_promptly_while_the_origin_is_silent(
    silence: str, server: FaultServer, opts: EnsureOptions, big: bytes, cache_dir: Path
) -> None:
    res_opts, ensure_opts, arrives = SILENCES[silence]
    res = Resource(big, **res_opts)  # type: ignore[arg-type]
    url = server.add(PATH, res)
    token = CancelToken()
    seen = threading.Event()

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "progress" and event.bytes_done >= arrives:
            seen.set()

    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure(url, opts, cancel=token, progress=on_event, read_timeout=60, **ensure_opts)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    if arrives:
        assert seen.wait(30)
    else:
        wait_for(lambda: len(server.requests_for(PATH)) == 1, what="the request")
    started = time.monotonic()
    token.cancel()
    worker.join(timeout=PROMPT)
    took = time.monotonic() - started
    assert not worker.is_alive(), "cancel did not stop the download"
    assert took < PROMPT and [type(e) for e in errors] == [CancelledError]
    kept = part_progress(cache_dir, url)
    assert kept >= (arrives if "parallel" not in silence else 3 * MiB)  # the part is kept
    for key in res_opts:
        setattr(res, key, Resource(b"").__getattribute__(key))  # the origin recovers
    entry = ensure(url, opts, **ensure_opts)
    assert entry.sha256 == sha256_of(entry.path)
    if kept:
        assert "Range" in server.requests_for(PATH)[-1].headers  # resumed, not restarted


def test_keyboard_interrupt_stops_a_parallel_download_promptly(
    server: FaultServer, opts: EnsureOptions, big: bytes, cache_dir: Path
) -> None:
    """Ctrl-C in the thread running ensure(): the workers stop too (they used to keep
    reading until the whole file was there), the part is saved, and it resumes."""
    res = Resource(big, stall_after=2 * MiB)
    url = server.add(PATH, res)
    stalled = threading.Event()
    interrupted_at: list[float] = []

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "progress" and event.bytes_done >= 4 * 2 * MiB:
            stalled.set()

    def interrupt() -> None:
        if stalled.wait(30):
            interrupted_at.append(time.monotonic())
            _thread.interrupt_main()

    helper = threading.Thread(target=interrupt)
    helper.start()
    with pytest.raises(KeyboardInterrupt):
        ensure(
            url,
            opts,
            connections=4,
            parallel_below_mbps=None,
            read_timeout=60,
            progress=on_event,
        )
    took = time.monotonic() - interrupted_at[0]
    helper.join()
    assert took < PROMPT
    assert part_progress(cache_dir, url) >= 2 * MiB
    res.stall_after = None
    entry = ensure(url, opts, connections=4)
    assert entry.sha256 == sha256_of(entry.path)
    assert all("Range" in r.headers for r in server.requests_for(PATH)[4:])


def test_cancel_is_prompt_while_a_request_sent_ahead_waits_for_its_answer(
    server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    """A worker's next piece was asked for before its current one ended and the origin holds
    that answer: a cancel stops the download all the same, and it resumes."""
    data = random_bytes(4 * MAX_PIECE, seed=42)
    gate = threading.Event()
    res = Resource(
        data,
        header_delay=0.3,  # a far origin: requests are sent about 0.3 s ahead
        chunk=256 * 1024,
        delay_per_chunk=0.01,
        headers_gate=gate,
        headers_gate_at=3 * MAX_PIECE,
    )
    url = server.add(PATH, res)
    token = CancelToken()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure(url, opts, cancel=token, connections=2, parallel_below_mbps=None)
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    try:
        asked = ("request", PATH, 3 * MAX_PIECE)
        wait_for(lambda: asked in server.timeline, what="the request sent ahead")
        started = time.monotonic()
        token.cancel()
        worker.join(timeout=PROMPT)
        took = time.monotonic() - started
    finally:
        gate.set()
    assert not worker.is_alive() and took < PROMPT
    assert [type(e) for e in errors] == [CancelledError]
    assert part_progress(cache_dir, url) > 0
    res.header_delay, res.delay_per_chunk = 0.0, 0.0
    entry = ensure(url, opts, connections=2)
    assert entry.sha256 == sha256_of(entry.path) == sha256_of_bytes(data)


def test_cli_sigint_stops_a_dripping_download_and_it_resumes(
    server: FaultServer, big: bytes, cache_dir: Path
) -> None:
    res = Resource(big, drip_after=3 * MiB, drip_interval=0.05)
    url = server.add(PATH, res)
    proc = subprocess.Popen(
        cli("--cache-dir", str(cache_dir), "get", url, "-x", "4"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(),
    )
    try:
        wait_for(lambda: part_progress(cache_dir, url) >= 3 * MiB, what="a checkpoint")
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=PROMPT)
        took = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130 and took < PROMPT
    assert "interrupted; run the same command again to resume" in err
    assert "Traceback" not in err
    kept = part_progress(cache_dir, url)
    assert kept >= 3 * MiB
    res.drip_after = None
    again = subprocess.run(
        cli("--cache-dir", str(cache_dir), "get", url, "-q"),
        capture_output=True,
        text=True,
        env=cli_env(),
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert sha256_of(Path(again.stdout.strip())) == sha256_of_bytes(big)
    assert "Range" in server.requests_for(PATH)[-1].headers


def sha256_of_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


# -- low-speed limit ------------------------------------------------------------------------
def test_low_speed_limit_turns_a_drip_into_retries_then_a_clear_error(
    server: FaultServer, opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    res = Resource(blob, drip_after=300_000, drip_interval=0.02)  # ~50 bytes/s
    url = server.add("/drip/model.gguf", res)
    events: list[ProgressEvent] = []
    with pytest.raises(DownloadError, match=r"slower than 1000 bytes/s for 1 s") as err:
        ensure(
            url,
            opts,
            low_speed_limit=1000,
            low_speed_time=1.0,
            max_retries=1,
            progress=events.append,
        )
    assert "after 2 attempt" in str(err.value)
    assert len(server.requests_for("/drip/model.gguf")) == 2  # one retry, then the error
    assert [e.kind for e in events].count("retry") == 1
    assert part_progress(cache_dir, url) >= 300_000  # what arrived is kept for a resume
    res.drip_after = None
    assert ensure(url, opts).sha256 == sha256_of_bytes(blob)


def test_low_speed_cli_flags_and_validation(
    server: FaultServer, blob: bytes, cache_dir: Path
) -> None:
    url = server.add("/drip/model.gguf", Resource(blob, drip_after=100_000, drip_interval=0.02))
    proc = subprocess.run(
        cli("--cache-dir", str(cache_dir), "get", url, "-q", "--retries", "0",
            "--low-speed-limit", "1K", "--low-speed-time", "1"),
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "slower than 1024 bytes/s for 1 s" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    bad = subprocess.run(
        cli("--cache-dir", str(cache_dir), "get", url, "--low-speed-time", "0"),
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert bad.returncode == 2 and "must be more than 0 seconds" in bad.stderr
    with pytest.raises(InvalidSourceError):
        EnsureOptions(low_speed_limit=-1)
    with pytest.raises(InvalidSourceError):
        EnsureOptions(low_speed_time=float("inf"))


# -- malformed redirects ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "location",
    ["http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x", "http://[::1/x", "http://:8/x"],
)
def test_malformed_location_is_one_clear_error(
    location: str, server: FaultServer, opts: EnsureOptions, cache_dir: Path
) -> None:
    url = server.add(PATH, Resource(b"", redirect_to=location))
    with pytest.raises(DownloadError, match="malformed Location"):
        ensure(url, opts)
    assert len(server.requests_for(PATH)) == 1  # not retried: the server is misconfigured
    proc = subprocess.run(
        cli("--cache-dir", str(cache_dir), "get", url),
        capture_output=True, text=True, env=cli_env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "malformed Location" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cancel_is_prompt_while_the_hub_is_silent(server: FaultServer, opts: EnsureOptions) -> None:
    """The HEAD that asks the hub about a file before downloading it can be cancelled too."""
    server.add("/TheOrg/Repo/resolve/main/m.gguf", Resource(b"x", stall_headers=True))
    token = CancelToken()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ensure("hf://TheOrg/Repo/m.gguf", opts, hf_endpoint=server.url(""), cancel=token,
                   read_timeout=60)  # fmt: skip
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: len(server.log) == 1, what="the HEAD")
    token.cancel()
    worker.join(timeout=PROMPT)
    assert not worker.is_alive() and [type(e) for e in errors] == [CancelledError]
