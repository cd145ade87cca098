"""Credentials and signed-URL query strings never reach metadata, logs, errors or repr."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import DownloadError, EnsureOptions, ModelSource, ProgressEvent, ensure

TOKEN = "tok_SUPERSECRET_123"
HEADER_SECRET = "hdr_SUPERSECRET_456"
SIGNATURE = "sig_SUPERSECRET_789"
SECRETS = (TOKEN, HEADER_SECRET, SIGNATURE)


def _assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def test_secrets_stay_out_of_everything(
    server: FaultServer,
    opts: EnsureOptions,
    blob: bytes,
    cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server.add("/s/model.gguf", Resource(blob, fail_statuses=[503]))
    url = server.url(f"/s/model.gguf?X-Amz-Signature={SIGNATURE}&X-Amz-Expires=60")
    events: list[ProgressEvent] = []
    options = opts.merged(
        bearer_token=TOKEN, headers={"X-Secret": HEADER_SECRET}, progress=events.append
    )
    caplog.set_level(logging.DEBUG)
    entry = ensure(url, options)
    # the secrets really went over the wire to the origin ...
    sent = server.requests_for("/s/model.gguf")[-1]
    assert SIGNATURE in sent.path and sent.headers["Authorization"] == f"Bearer {TOKEN}"
    # ... and nowhere else
    for path in cache_dir.rglob("*"):
        if path.is_file() and path.name != "model.gguf":
            _assert_clean(path.read_text(errors="replace"))
    _assert_clean(repr(entry) + str(entry.to_dict()))
    _assert_clean(repr(options) + repr(ModelSource.parse(url)) + str(ModelSource.parse(url)))
    _assert_clean(" ".join(f"{e.source} {e.message}" for e in events))
    _assert_clean(caplog.text)
    assert "/s/model.gguf" in caplog.text  # the logs were captured, they are just redacted


def test_errors_do_not_echo_secrets(server: FaultServer, opts: EnsureOptions) -> None:
    server.add("/e/missing.gguf", Resource(b"", fail_statuses=[404]))
    url = server.url(f"/e/missing.gguf?sig={SIGNATURE}")
    with pytest.raises(DownloadError) as err:
        ensure(url, opts, bearer_token=TOKEN, headers={"X-Secret": HEADER_SECRET})
    _assert_clean(str(err.value) + repr(err.value))
    assert "404" in str(err.value)
    with FaultServer() as dead:
        dead_url = dead.url(f"/x.gguf?sig={SIGNATURE}")
    with pytest.raises(DownloadError) as err2:
        ensure(dead_url, opts, bearer_token=TOKEN, max_retries=0)
    _assert_clean(str(err2.value))


def test_cli_output_is_clean(server: FaultServer, cache_dir: Path, blob: bytes) -> None:
    server.add("/c/model.gguf", Resource(blob))
    url = server.url(f"/c/model.gguf?sig={SIGNATURE}")
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache_dir), "get", url,
         "--token", TOKEN, "-H", f"X-Secret: {HEADER_SECRET}", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    _assert_clean(proc.stdout + proc.stderr)
    ls = subprocess.run(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache_dir), "ls", "--json"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    _assert_clean(ls.stdout + ls.stderr)
    assert "/c/model.gguf?<redacted>" in ls.stdout
