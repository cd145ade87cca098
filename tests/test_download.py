"""Download behaviour against our fault-injecting origin: retries, resume rules, redirects,
credential scoping, cancellation, integrity."""

from __future__ import annotations

import hashlib
import ssl
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from modelfetch import (
    CancelledError,
    CancelToken,
    DownloadError,
    EnsureOptions,
    InsecureRedirectError,
    IntegrityError,
    ModelSource,
    ProgressEvent,
    ensure,
)

from .conftest import part_progress, sha256_of

PATH = "/files/model.gguf"


def ranges(server: FaultServer, path: str = PATH) -> list[tuple[str | None, str | None]]:
    return [(r.headers.get("Range"), r.headers.get("If-Range")) for r in server.requests_for(path)]


def part_of(cache_dir: Path, url: str) -> Path:
    src = ModelSource.parse(url)
    return cache_dir / "entries" / src.entry_dir_name / (src.file_name + ".part")


# -- retries -------------------------------------------------------------------------------
def test_retries_5xx_then_succeeds(server: FaultServer, opts: EnsureOptions, blob: bytes) -> None:
    url = server.add(PATH, Resource(blob, fail_statuses=[500, 502, 503]))
    events: list[ProgressEvent] = []
    entry = ensure(url, opts, progress=events.append)
    assert sha256_of(entry.path) == hashlib.sha256(blob).hexdigest()
    assert len(server.requests_for(PATH)) == 4
    assert [e.kind for e in events].count("retry") == 3


def test_gives_up_after_max_retries(server: FaultServer, opts: EnsureOptions, blob: bytes) -> None:
    url = server.add(PATH, Resource(blob, fail_statuses=[503] * 5))
    with pytest.raises(DownloadError, match="after 3 attempt"):
        ensure(url, opts, max_retries=2)
    assert len(server.requests_for(PATH)) == 3


def test_429_honours_retry_after(server: FaultServer, opts: EnsureOptions, blob: bytes) -> None:
    url = server.add(PATH, Resource(blob, fail_statuses=[429], retry_after="1"))
    events: list[ProgressEvent] = []
    ensure(url, opts, max_backoff=5.0, progress=events.append)
    retry = [e for e in events if e.kind == "retry"]
    assert len(retry) == 1 and "retrying in 1.0s" in retry[0].message


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410])
def test_client_errors_fail_at_once(
    status: int, server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    url = server.add(PATH, Resource(blob, fail_statuses=[status]))
    with pytest.raises(DownloadError) as err:
        ensure(url, opts)
    assert err.value.status == status
    assert len(server.requests_for(PATH)) == 1


def test_connection_drops_resume_with_if_range(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob, drop_after=[700_000, 900_000])
    url = server.add(PATH, res)
    entry = ensure(url, opts)
    assert entry.sha256 == blob_sha and sha256_of(entry.path) == blob_sha
    assert ranges(server) == [
        (None, None),
        (f"bytes=700000-{len(blob) - 1}", res.etag),
        (f"bytes=1600000-{len(blob) - 1}", res.etag),
    ]


def test_connection_refused_is_retried_then_reported(opts: EnsureOptions) -> None:
    with FaultServer() as dead:
        url = dead.url(PATH)
    with pytest.raises(DownloadError, match="failed after 2 attempt"):
        ensure(url, opts, max_retries=1)


# -- resume rules --------------------------------------------------------------------------
def _interrupted(server: FaultServer, opts: EnsureOptions, res: Resource, at: int) -> str:
    """Leave a part file of ``at`` bytes behind, as a crashed download would."""
    res.drop_after = [at]
    url = server.add(PATH, res)
    with pytest.raises(DownloadError):
        ensure(url, opts, max_retries=0)
    assert part_progress(Path(opts.cache_dir), url) == at  # type: ignore[arg-type]
    return url


def test_resume_with_last_modified_only(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob, etag="")
    url = _interrupted(server, opts, res, 1_000_000)
    assert ensure(url, opts).sha256 == blob_sha
    assert ranges(server)[-1] == (f"bytes=1000000-{len(blob) - 1}", res.last_modified)


def test_no_validator_and_no_sha_restarts_from_zero(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url = _interrupted(server, opts, Resource(blob, etag="", last_modified=""), 1_000_000)
    assert ensure(url, opts).sha256 == blob_sha
    assert ranges(server)[-1] == (None, None)


def test_no_validator_but_known_sha_resumes(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob, etag="", last_modified="")
    res.drop_after = [1_000_000]
    url = server.add(PATH, res)
    with pytest.raises(DownloadError):
        ensure(url, opts, max_retries=0, sha256=blob_sha)
    assert ensure(url, opts, sha256=blob_sha).sha256 == blob_sha
    assert ranges(server)[-1] == (f"bytes=1000000-{len(blob) - 1}", None)


def test_resume_disabled_starts_over(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    url = _interrupted(server, opts, Resource(blob), 1_000_000)
    assert ensure(url, opts, resume=False).sha256 == blob_sha
    assert ranges(server)[-1] == (None, None)


def test_200_instead_of_206_restarts_with_one_stream(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob)
    url = _interrupted(server, opts, res, 1_000_000)
    res.ignore_range = True
    events: list[ProgressEvent] = []
    assert ensure(url, opts, progress=events.append).sha256 == blob_sha
    assert ranges(server)[1:] == [(f"bytes=1000000-{len(blob) - 1}", res.etag), (None, None)]
    assert "restart" in [e.kind for e in events]


def test_bad_content_range_restarts(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    res = Resource(blob)
    url = _interrupted(server, opts, res, 1_000_000)
    res.bad_content_range = True
    assert ensure(url, opts).sha256 == blob_sha
    assert ranges(server)[1:] == [(f"bytes=1000000-{len(blob) - 1}", res.etag), (None, None)]


def test_changed_file_restarts_via_if_range(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    res = Resource(blob)
    url = _interrupted(server, opts, res, 1_000_000)
    new = blob[::-1]
    res.replace_data(new)
    entry = ensure(url, opts)
    assert entry.sha256 == hashlib.sha256(new).hexdigest() == sha256_of(entry.path)


def test_changed_etag_in_206_restarts(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    res = Resource(blob)
    url = _interrupted(server, opts, res, 1_000_000)
    new = bytes(b ^ 1 for b in blob[:100]) + blob[100:]
    res.replace_data(new)
    res.ignore_if_range = True  # a broken origin that serves a range of the new file
    entry = ensure(url, opts)
    assert sha256_of(entry.path) == hashlib.sha256(new).hexdigest()
    assert ranges(server)[-1] == (None, None)


def test_416_restarts(server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str) -> None:
    res = Resource(blob)
    url = _interrupted(server, opts, res, 1_000_000)
    res.always_416 = True
    assert ensure(url, opts).sha256 == blob_sha
    assert ranges(server)[-1] == (None, None)


def test_pinned_sha_mismatch_is_an_integrity_error(
    server: FaultServer, opts: EnsureOptions, blob: bytes, cache_dir: Path
) -> None:
    url = server.add(PATH, Resource(blob))
    with pytest.raises(IntegrityError, match="SHA-256 mismatch"):
        ensure(url, opts, sha256="ab" * 32)
    assert not part_of(cache_dir, url).exists()
    assert not any(cache_dir.glob("entries/*/model.gguf"))


# -- redirects and credentials --------------------------------------------------------------
def test_same_origin_redirect_keeps_credentials(
    server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    server.add("/real.gguf", Resource(blob))
    url = server.add(PATH, Resource(b"", redirect_to="/real.gguf", redirect_status=307))
    ensure(url, opts, bearer_token="tok-123", headers={"X-Api-Key": "k-456"})
    final = server.requests_for("/real.gguf")[0].headers
    assert final["Authorization"] == "Bearer tok-123" and final["X-Api-Key"] == "k-456"


def test_cross_origin_redirect_drops_every_credential(
    server: FaultServer, other_server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    cdn = other_server.add("/cdn/model.gguf", Resource(blob))
    url = server.add(PATH, Resource(b"", redirect_to=cdn))
    ensure(url, opts, bearer_token="tok-123", headers={"X-Custom": "secret-hdr"})
    asked = server.requests_for(PATH)[0].headers
    assert asked["Authorization"] == "Bearer tok-123"
    seen = other_server.requests_for("/cdn/model.gguf")[0].headers
    assert "Authorization" not in seen and "X-Custom" not in seen


def test_userinfo_becomes_basic_auth_for_origin_only(
    server: FaultServer, other_server: FaultServer, opts: EnsureOptions, blob: bytes
) -> None:
    cdn = other_server.add("/cdn/model.gguf", Resource(blob))
    server.add(PATH, Resource(b"", redirect_to=cdn))
    url = f"http://alice:s3cret@127.0.0.1:{server.port}{PATH}"
    entry = ensure(url, opts)
    assert server.requests_for(PATH)[0].headers["Authorization"].startswith("Basic ")
    assert "Authorization" not in other_server.requests_for("/cdn/model.gguf")[0].headers
    assert "s3cret" not in entry.source and "alice" not in entry.source


def test_redirect_loop_is_refused(server: FaultServer, opts: EnsureOptions) -> None:
    url = server.add(PATH, Resource(b"", redirect_to=PATH))
    with pytest.raises(InsecureRedirectError, match="more than 10 redirects"):
        ensure(url, opts)
    assert len(server.requests_for(PATH)) == 11


def test_redirect_to_other_scheme_is_refused(server: FaultServer, opts: EnsureOptions) -> None:
    url = server.add(PATH, Resource(b"", redirect_to="file:///etc/passwd"))
    with pytest.raises(InsecureRedirectError):
        ensure(url, opts)


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultServer]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
         "-out", str(cert), "-days", "2", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # trust our test CA (OpenSSL reads this)
    with FaultServer(tls=ctx) as s:
        yield s


def test_https_origin_works_and_downgrade_is_refused(
    tls_server: FaultServer, server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str
) -> None:
    ok = tls_server.add("/ok.gguf", Resource(blob))
    assert ensure(ok, opts).sha256 == blob_sha
    plain = server.add(PATH, Resource(blob))
    url = tls_server.add("/down.gguf", Resource(b"", redirect_to=plain))
    with pytest.raises(InsecureRedirectError, match="https to http"):
        ensure(url, opts, bearer_token="tok")
    assert server.requests_for(PATH) == []  # the plain-http target was never contacted


# -- cancellation ----------------------------------------------------------------------------
def test_cancel_keeps_part_and_next_call_resumes(
    server: FaultServer, opts: EnsureOptions, blob: bytes, blob_sha: str, cache_dir: Path
) -> None:
    res = Resource(blob, chunk=64 * 1024, delay_per_chunk=0.005)
    url = server.add(PATH, res)
    token = CancelToken()

    def cancel_midway(event: ProgressEvent) -> None:
        if event.kind == "progress" and event.bytes_done > 500_000:
            token.cancel()

    with pytest.raises(CancelledError):
        ensure(url, opts, cancel=token, progress=cancel_midway)
    kept = part_progress(cache_dir, url)
    assert 500_000 < kept < len(blob)
    res.delay_per_chunk = 0
    assert ensure(url, opts).sha256 == blob_sha
    assert ranges(server)[-1] == (f"bytes={kept}-{len(blob) - 1}", res.etag)
