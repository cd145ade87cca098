"""A fleet of machines (cache roots) behind one shared tier (a real SeaweedFS) and one
throttled origin (our fault server): one origin download, streamed to everyone while it
runs; a leader killed with -9 is taken over; stores that ignore conditional writes, hostile
leases and rotten chunks cost at most an extra download, never a wrong file or a hang."""

from __future__ import annotations

import hashlib
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
import urllib3
from click.testing import CliRunner

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from devtools.seaweed import SeaweedFS
from modelfetch import (
    CacheEntry,
    DownloadError,
    EnsureOptions,
    ModelSource,
    ProgressEvent,
    ensure,
)
from modelfetch.cli import main as cli_main
from modelfetch.fetch.tier import RemoteTier, TierLeaseStore
from modelfetch.lease import LEASE_NAME, decode_lease
from modelfetch.mirror import MirrorServer
from modelfetch.tierstream import read_manifest

from .conftest import sha256_of

ROOT = Path(__file__).resolve().parents[1]
SIZE = 4 * 1024 * 1024
CHUNK = 256 * 1024
TTL = 1.0  # where a quick take-over is the point
# Where nobody dies: long enough that a leader starved of CPU on a busy test machine is
# not mistaken for a dead one (that would cost an extra origin download, by design).
CALM_TTL = 5.0
# 64 KiB every 40 ms: about 1.6 MB/s, so a download takes ~2.6 s and a kill lands mid-way
# (the downloader hands bytes to its hasher, and so to the tier, at least every second).
SLOW = {"chunk": 64 * 1024, "delay_per_chunk": 0.04}


@pytest.fixture(scope="module")
def model() -> bytes:
    return random_bytes(SIZE, seed=11)


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


class Fleet:
    """N machine processes (devtools/fleet_machine.py) released at the same moment."""

    def __init__(
        self,
        tmp: Path,
        url: str,
        tier_url: str,
        endpoint: str,
        count: int,
        ttl: float,
        **extra: object,
    ) -> None:
        self.markers = tmp / "markers"
        self.markers.mkdir()
        self.go = tmp / "go"
        self.procs: dict[str, subprocess.Popen[str]] = {}
        for i in range(count):
            tag = f"m{i}"
            spec = {
                "url": url,
                "cache_dir": str(tmp / tag),
                "markers": str(self.markers),
                "tag": tag,
                "remote": tier_url,
                "endpoint": endpoint,
                "chunk_size": CHUNK,
                "ttl": ttl,
                "go": str(self.go),
                **extra,
            }
            self.procs[tag] = subprocess.Popen(
                [sys.executable, "-m", "devtools.fleet_machine", json.dumps(spec)],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env={**os.environ, "PYTHONPATH": str(ROOT)},
            )

    def start(self) -> None:
        wait_for(
            lambda: all((self.markers / f"{t}.ready").exists() for t in self.procs),
            60,
            "every machine to be ready",
        )
        self.go.touch()

    def saw(self, tag: str, kind: str) -> bool:
        return (self.markers / f"{tag}.{kind}").exists()

    def leader(self) -> str:
        leaders = [t for t in self.procs if self.saw(t, "tier_lead")]
        assert len(leaders) == 1, leaders
        return leaders[0]

    def results(self, skip: tuple[str, ...] = ()) -> dict[str, dict[str, object]]:
        out = {}
        for tag, proc in self.procs.items():
            if tag in skip:
                continue
            stdout, stderr = proc.communicate(timeout=90)  # a hang guard, not a timing test
            assert proc.returncode == 0, (tag, stdout, stderr[-2000:])
            out[tag] = json.loads(stdout.strip().splitlines()[-1])
        return out

    def kill_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)


def test_eight_machines_at_once_download_from_the_origin_once(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model, **SLOW))  # type: ignore[arg-type]
    fleet = Fleet(tmp_path, url, tier_url, seaweed.endpoint, 8, CALM_TTL)
    try:
        fleet.start()
        results = fleet.results()
    finally:
        fleet.kill_all()
    want = hashlib.sha256(model).hexdigest()
    for result in results.values():
        assert result["sha256"] == want == sha256_of(Path(str(result["path"])))
    assert server.body_bytes["/f/model.gguf"] <= 1.05 * len(model)
    vias = sorted(str(r["via"]) for r in results.values())
    assert vias.count("origin") == 1 and set(vias) <= {"origin", "peer", "tier"}, vias
    leader = fleet.leader()
    followers = [t for t in results if t != leader]
    assert all(fleet.saw(t, "tier_follow") for t in followers if results[t]["via"] == "peer")


def test_leader_killed_half_way_is_taken_over(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model, **SLOW))  # type: ignore[arg-type]
    fleet = Fleet(tmp_path, url, tier_url, seaweed.endpoint, 8, 2 * TTL)
    try:
        fleet.start()
        wait_for(lambda: any(fleet.saw(t, "tier_lead") for t in fleet.procs), 60, "a leader")
        leader = fleet.leader()
        store = RemoteTier(tier_url, seaweed.endpoint).lease_store(ModelSource.parse(url))
        wait_for(
            lambda: (
                server.body_bytes.get("/f/model.gguf", 0) >= len(model) // 2
                and published(store) > 0
            ),
            60,
            "the origin to send half the file, and the leader to publish some of it",
        )
        fleet.procs[leader].send_signal(signal.SIGKILL)
        sent_at_kill = server.body_bytes["/f/model.gguf"]
        fleet.procs[leader].wait(timeout=10)
        results = fleet.results(skip=(leader,))
    finally:
        fleet.kill_all()
    assert sent_at_kill < len(model)  # it really died half way
    want = hashlib.sha256(model).hexdigest()
    for result in results.values():
        assert result["sha256"] == want == sha256_of(Path(str(result["path"])))
    vias = [str(r["via"]) for r in results.values()]
    assert vias.count("takeover") == 1 and set(vias) <= {"takeover", "peer"}, vias
    assert server.body_bytes["/f/model.gguf"] <= 2 * len(model)
    # the successor had streamed chunks from the leader before it died, and asked the
    # origin only for the rest
    ranges = [r.headers.get("Range") for r in server.requests_for("/f/model.gguf")]
    assert ranges[0] is None and len(ranges) == 2, ranges
    resumed_at = int(str(ranges[1]).removeprefix("bytes=").split("-")[0])
    assert CHUNK <= resumed_at <= sent_at_kill and resumed_at % CHUNK == 0


def published(store: TierLeaseStore) -> int:
    found = store.read()
    lease = decode_lease(found[0]) if found else None
    return lease.published if lease else 0


def test_parallel_leader_publishes_out_of_order_and_is_taken_over(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path
) -> None:
    """A leader on 4 connections fills its part in 4 places at once; its chunks are
    published as they land, not when the first segment is done, and a successor keeps
    every published chunk and asks the origin only for the gaps."""
    model = random_bytes(16 * 1024 * 1024, seed=12)  # the smallest file worth splitting
    url = server.add("/f/big.gguf", Resource(model, **SLOW))  # type: ignore[arg-type]
    fleet = Fleet(
        tmp_path,
        url,
        tier_url,
        seaweed.endpoint,
        4,
        2 * TTL,
        chunk_size=1024 * 1024,
        connections=4,
        parallel_below_mbps=None,
    )
    store = RemoteTier(tier_url, seaweed.endpoint).lease_store(ModelSource.parse(url))

    def spread() -> bool:  # published chunks beyond the first segment (a quarter)
        found = store.read()
        lease = decode_lease(found[0]) if found else None
        return lease is not None and any(lease.chunks[4:]) and not all(lease.chunks[:4])

    try:
        fleet.start()
        wait_for(lambda: any(fleet.saw(t, "tier_lead") for t in fleet.procs), 60, "a leader")
        leader = fleet.leader()
        wait_for(
            lambda: server.body_bytes.get("/f/big.gguf", 0) >= len(model) // 2 and spread(),
            60,
            "half the file, published out of order",
        )
        fleet.procs[leader].send_signal(signal.SIGKILL)
        sent_at_kill = server.body_bytes["/f/big.gguf"]
        fleet.procs[leader].wait(timeout=10)
        results = fleet.results(skip=(leader,))
    finally:
        fleet.kill_all()
    want = hashlib.sha256(model).hexdigest()
    for result in results.values():
        assert result["sha256"] == want == sha256_of(Path(str(result["path"])))
    vias = [str(r["via"]) for r in results.values()]
    assert vias.count("takeover") == 1 and set(vias) <= {"takeover", "peer"}, vias
    total = server.body_bytes["/f/big.gguf"]
    assert sent_at_kill < len(model) and total <= 2 * len(model)
    assert total - sent_at_kill < len(model)  # the successor did not start over


def in_threads(count: int, work: Callable[[int], CacheEntry]) -> list[CacheEntry]:
    """``count`` machines as threads in this process (each with its own cache root)."""
    results: dict[int, CacheEntry] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=90)
    assert errors == [] and len(results) == count, errors
    return [results[i] for i in range(count)]


def test_store_that_ignores_conditional_writes_costs_at_most_one_extra_download(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model, **SLOW))  # type: ignore[arg-type]
    # Never sends If-None-Match / If-Match: only the read-back confirmation decides.
    tier = RemoteTier(tier_url, seaweed.endpoint, conditional_writes=False)
    entries = in_threads(
        6,
        lambda i: ensure(
            url,
            cache_dir=tmp_path / f"t{i}",
            remote=tier,
            remote_chunk_size=CHUNK,
            remote_lease_ttl=CALM_TTL,
        ),
    )
    want = hashlib.sha256(model).hexdigest()
    assert all(e.sha256 == want == sha256_of(e.path) for e in entries)
    assert server.body_bytes["/f/model.gguf"] <= 2 * len(model)
    assert [e.via for e in entries].count("origin") in (1, 2)


def test_unreadable_lease_is_replaced_after_its_ttl(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model))
    tier = RemoteTier(tier_url, seaweed.endpoint)
    src = ModelSource.parse(url)
    bucket = tier_url[5:].split("/")[0]
    for garbage in (b"\xff{not json", json.dumps({"modelfetch_lease": 1, "ttl": 1e9}).encode()):
        seaweed.client().put_object(
            Bucket=bucket, Key=f"{tier.entry_key(src)}/{LEASE_NAME}", Body=garbage
        )
        events: list[ProgressEvent] = []
        entry = ensure(
            url,
            cache_dir=tmp_path / str(len(garbage)),
            remote=tier,
            remote_lease_ttl=TTL,
            progress=events.append,
        )
        assert entry.sha256 == sha256_of(entry.path) == hashlib.sha256(model).hexdigest()
        assert entry.via == "origin" and "tier_lead" in [e.kind for e in events]
        seaweed.client().delete_object(Bucket=bucket, Key=f"{tier.entry_key(src)}/manifest.json")
    assert tier.lease_store(src).read() is None  # released after the download


def test_rotten_chunk_is_rejected_and_replaced(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model))
    tier = RemoteTier(tier_url, seaweed.endpoint)
    src = ModelSource.parse(url)
    first = ensure(url, cache_dir=tmp_path / "a", remote=tier, remote_chunk_size=CHUNK)
    found = read_manifest(tier, src)
    assert found is not None and found[0] is not None
    manifest = found[0]
    bucket = tier_url[5:].split("/")[0]
    key = f"{tier.entry_key(src)}/chunks/{manifest.chunks[3].run}/3"
    seaweed.client().put_object(Bucket=bucket, Key=key, Body=b"\0" * CHUNK)  # same size
    events: list[ProgressEvent] = []
    second = ensure(url, cache_dir=tmp_path / "b", remote=tier, progress=events.append)
    assert second.sha256 == first.sha256 == sha256_of(second.path)
    warnings = [e.message for e in events if e.kind == "warning"]
    assert warnings == ["shared tier copy rejected: tier chunk 3 does not match its SHA-256"]
    assert second.via == "origin" and len(server.requests_for("/f/model.gguf")) == 2
    third = ensure(url, cache_dir=tmp_path / "c", remote=tier)
    assert third.via == "tier" and sha256_of(third.path) == first.sha256


def test_failed_leader_releases_its_lease_at_once(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path
) -> None:
    url = server.url("/f/missing.gguf")  # 404 at the origin
    tier = RemoteTier(tier_url, seaweed.endpoint)

    def attempt(i: int) -> str:
        with pytest.raises(DownloadError) as info:
            ensure(url, cache_dir=tmp_path / f"x{i}", remote=tier, remote_lease_ttl=600)
        return str(info.value.status)

    # With a ttl of 10 minutes, the second machine only finishes because the first one
    # released the lease when its download failed (the pytest timeout is the hang guard).
    assert [attempt(0), attempt(1)] == ["404", "404"]
    assert tier.lease_store(ModelSource.parse(url)).read() is None


def test_cli_get_json_says_how_the_file_came(
    server: FaultServer, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    url = server.add("/f/model.gguf", Resource(model))
    runner = CliRunner()
    vias = []
    for name in ("a", "b", "b"):
        args = ["--cache-dir", str(tmp_path / name), "get", url, "--json", "-q"]
        args += ["--remote", tier_url, "--remote-endpoint", seaweed.endpoint]
        result = runner.invoke(cli_main, args)
        assert result.exit_code == 0, result.output
        vias.append(json.loads(result.stdout)["via"])
    assert vias == ["origin", "tier", "cache"]


def test_two_mirror_replicas_share_one_upstream_download(
    hub: HubEmulator, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    """Mirrors pull through with ensure(): replicas in front of one tier share the lease,
    and the hub's SHA-256 (X-Linked-Etag) travels in the lease to the follower."""
    repo, name = "TheOrg/Fleet-GGUF", "fleet-Q4_K_M.gguf"
    commit = hub.create_repo(repo, {name: model})
    hub.cdn.rate = 1.6e6  # bytes/s: the download takes a few seconds
    opts = EnsureOptions(
        remote=tier_url, remote_endpoint=seaweed.endpoint, remote_lease_ttl=CALM_TTL
    )
    replicas = [
        MirrorServer(tmp_path / f"mirror{i}", upstream=hub.endpoint, options=opts) for i in range(2)
    ]
    bodies: dict[int, bytes] = {}
    try:
        for replica in replicas:
            replica.start()
        barrier = threading.Barrier(2)

        def client(i: int) -> None:
            barrier.wait(timeout=30)
            pool = urllib3.PoolManager()
            url = f"{replicas[i].url}/{repo}/resolve/main/{name}"
            bodies[i] = pool.request("GET", url, timeout=60).data

        threads = [threading.Thread(target=client, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
    finally:
        for replica in replicas:
            replica.stop()
    assert bodies == {0: model, 1: model}
    assert hub.cdn.body_bytes() == len(model)  # one download from the CDN
    sha = hashlib.sha256(model).hexdigest()
    for replica in replicas:  # each replica holds a verified entry with the hub's commit
        entry = replica.cache.get(ModelSource.huggingface(repo, name))
        assert entry is not None and entry.sha256 == sha and entry.commit == commit


def test_a_follower_replica_streams_the_leaders_download_to_its_clients(
    hub: HubEmulator, seaweed: SeaweedFS, tier_url: str, tmp_path: Path, model: bytes
) -> None:
    """Replica 0 pulls from the CDN for the fleet; replica 1 follows through the tier and
    streams the chunks to its client as they arrive: the client gets bytes while the CDN
    holds back the file's last MiB, so before the upstream download can have ended."""
    repo, name = "TheOrg/Fleet-GGUF", "fleet-Q4_K_M.gguf"
    hub.create_repo(repo, {name: model})
    hub.cdn.rate = 1.6e6
    hub.cdn.pause_after(len(model) - 1024 * 1024)
    opts = EnsureOptions(
        remote=tier_url,
        remote_endpoint=seaweed.endpoint,
        remote_lease_ttl=CALM_TTL,
        remote_chunk_size=CHUNK,
    )
    path = f"/{repo}/resolve/main/{name}"
    replicas = [
        MirrorServer(tmp_path / f"mirror{i}", upstream=hub.endpoint, options=opts) for i in range(2)
    ]
    pool = urllib3.PoolManager()
    try:
        for replica in replicas:
            replica.start()
        lead = pool.request("GET", replicas[0].url + path, preload_content=False, timeout=60)
        wait_for(lambda: len(hub.cdn.requests("GET")) > 0, 30, "the leader's download")
        follow = pool.request("GET", replicas[1].url + path, preload_content=False, timeout=60)
        assert follow.status == 200 and follow.headers["Content-Length"] == str(len(model))
        first = follow.read(CHUNK)
        assert first == model[:CHUNK] and hub.cdn.body_bytes() < len(model)
        hub.cdn.resume()
        assert first + follow.read() == model
        assert lead.read() == model
    finally:
        hub.cdn.resume()
        for replica in replicas:
            replica.stop()
    assert hub.cdn.body_bytes() == len(model)
    via = replicas[1].cache.get(ModelSource.huggingface(repo, name))
    assert via is not None and via.sha256 == hashlib.sha256(model).hexdigest()
