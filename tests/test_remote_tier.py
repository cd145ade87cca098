"""The shared S3 tier, against a real SeaweedFS server: two machines (cache roots) that
share a tier fetch from the origin once; a bad tier copy is never served; the single-object
layout older versions wrote is still read. (Machines at the same moment: test_fleet.py.)"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.seaweed import SeaweedFS
from modelfetch import EnsureOptions, ModelSource, ProgressEvent, ensure
from modelfetch.fetch.tier import RemoteTier
from modelfetch.tierstream import read_manifest

from .conftest import sha256_of


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
    assert (a.via, b.via) == ("origin", "tier")
    # the tier holds a manifest that describes the file, and no lease any more
    tier = RemoteTier(tier_url, seaweed.endpoint)
    found = read_manifest(tier, ModelSource.parse(url))
    assert found is not None and found[0] is not None
    assert (found[0].sha256, found[0].size) == (blob_sha, len(blob))
    assert tier.lease_store(ModelSource.parse(url)).read() is None


def test_single_object_layout_is_still_read(
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
    seaweed.client().put_object(
        Bucket=bucket, Key=key, Body=blob, Metadata={"sha256": blob_sha, "size": str(len(blob))}
    )
    entry = ensure(url, machine(tmp_path, "old", tier_url, seaweed))
    assert entry.sha256 == blob_sha == sha256_of(entry.path) and entry.via == "tier"
    assert server.requests_for("/t/model.gguf") == []


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
    # the origin's copy is in the tier now, and is what the next machine gets
    after = ensure(url, machine(tmp_path, "c2", tier_url, seaweed))
    assert after.via == "tier" and sha256_of(after.path) == blob_sha
    assert len(server.requests_for("/t/model.gguf")) == 1


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
    assert entry.sha256 == blob_sha and entry.via == "origin"
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


def test_two_seaweedfs_servers_run_side_by_side(seaweed: SeaweedFS) -> None:
    """Test runs share this machine: a second SeaweedFS must not collide with the first
    (SeaweedFS 4.x opens catalog listeners on fixed ports unless told not to)."""
    with SeaweedFS() as other:
        assert other.endpoint != seaweed.endpoint
        client = other.client()
        client.create_bucket(Bucket="side-by-side")
        client.put_object(Bucket="side-by-side", Key="k", Body=b"v")
        assert client.get_object(Bucket="side-by-side", Key="k")["Body"].read() == b"v"


def test_conditional_writes_on_the_real_store(seaweed: SeaweedFS, tier_url: str) -> None:
    """What the lease builds on, checked against this SeaweedFS (issue #8800 was about
    version 4.16 letting concurrent If-None-Match writes all succeed)."""
    import concurrent.futures

    tier = RemoteTier(tier_url, seaweed.endpoint)
    key = f"{tier.prefix}/probe/lease.json"
    first = tier.write_doc(key, b"{}", create=True)
    assert first and tier.write_doc(key, b"[]", create=True) is None
    assert tier.write_doc(key, b"[1]", match='"not-the-etag"') is None
    assert tier.write_doc(key, b"[2]", match=first) not in (None, first)
    race = f"{key}.race"
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        racers = list(pool.map(lambda i: tier.write_doc(race, b"%d" % i, create=True), range(8)))
    assert sum(etag is not None for etag in racers) == 1
    stored = tier.read_doc(race, 100)
    assert stored is not None and stored[1] in racers
