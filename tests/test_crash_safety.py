"""A kill -9 at any instant around a restart leaves a part and checkpoint that are safe to
resume: the checkpoint never claims a byte the part does not hold, and the next run stores
exactly the origin's bytes (``verify`` agrees)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import modelfetch
from devtools.fault_server import FaultServer, Resource
from modelfetch import Cache, DownloadError, ModelSource, ensure
from modelfetch.cache.part import load_part_state, part_paths

from .conftest import sha256_of

CHILD = Path(__file__).with_name("child_kill.py")
ROOT = Path(__file__).resolve().parents[1]
PACKAGE_ROOT = Path(modelfetch.__file__).resolve().parents[1]
PATH = "/crash/model.gguf"


def run_child(
    url: str, cache_dir: Path, kill_at: int, resume: bool, connections: int
) -> subprocess.CompletedProcess[str]:
    # The child imports the same modelfetch as this test, and devtools from the checkout.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PACKAGE_ROOT), str(ROOT)])}
    args = [sys.executable, str(CHILD), url, str(cache_dir), str(kill_at), str(int(resume))]
    args.append(str(connections))
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60)


def assert_checkpoint_within_part(cache_dir: Path, url: str, blob: bytes) -> None:
    """Every byte the checkpoint claims is in the part, and is the origin's byte. (Without a
    part nothing is resumed: right after promotion the part is gone before its checkpoint.)"""
    src = ModelSource.parse(url)
    part, state_path = part_paths(cache_dir / "entries" / src.entry_dir_name, src.file_name)
    state = load_part_state(state_path, src.cache_key)
    if state is None or not part.exists():
        return
    data = part.read_bytes()
    for start, _, pos in state.segments:
        assert data[start:pos] == blob[start:pos], f"checkpoint claims [{start}, {pos})"


@pytest.fixture
def interrupted(server: FaultServer, tmp_path: Path, blob: bytes) -> tuple[Resource, str, Path]:
    """A cache holding a part of 1,000,000 good bytes and its checkpoint."""
    res = Resource(blob, drop_after=[1_000_000])
    url = server.add(PATH, res)
    template = tmp_path / "template"
    with pytest.raises(DownloadError):
        ensure(url, cache_dir=template, max_retries=0)
    return res, url, template


@pytest.mark.parametrize(
    "restart, connections",
    [("no-resume", 8), ("200-to-resume", 1), ("200-to-resume", 8)],
)
def test_kill_9_at_every_step_of_a_restart(
    restart: str,
    connections: int,
    interrupted: tuple[Resource, str, Path],
    tmp_path: Path,
    blob: bytes,
    blob_sha: str,
) -> None:
    res, url, template = interrupted
    resume = restart != "no-resume"

    def restarting() -> None:
        res.ignore_range = restart == "200-to-resume"  # the origin answers the resume with 200

    # First learn the file-system steps of a full run, then die before each one in turn.
    restarting()
    probe = tmp_path / "probe"
    shutil.copytree(template, probe)
    done = run_child(url, probe, 0, resume, connections)
    assert done.returncode == 0, done.stderr[-2000:]
    steps = json.loads(done.stdout.strip().splitlines()[-1])
    assert any(step.startswith("os.truncate") for step in steps)  # it did restart the part
    assert 5 <= len(steps) <= 60  # bounded: a handful of steps per attempt

    for kill_at in range(1, len(steps) + 1):
        cache_dir = tmp_path / f"k{kill_at}"
        shutil.copytree(template, cache_dir)
        restarting()
        killed = run_child(url, cache_dir, kill_at, resume, connections)
        assert killed.returncode == -signal.SIGKILL, (kill_at, killed.stderr[-2000:])
        assert_checkpoint_within_part(cache_dir, url, blob)
        res.ignore_range = False  # the origin behaves again: the next run may resume
        entry = ensure(url, cache_dir=cache_dir, retry_backoff=0.01)
        assert sha256_of(entry.path) == blob_sha == entry.sha256, f"killed at {steps[kill_at - 1]}"
        assert [r.ok for r in Cache(cache_dir).verify()] == [True]
        shutil.rmtree(cache_dir)
