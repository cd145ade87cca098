"""``modelfetch get hf://owner/repo --all`` as a real subprocess against the hub emulation:
output contract, ls/verify/rm, and a kill -9 in the middle of a multi-file download."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from modelfetch import ModelSource
from modelfetch.cache.part import load_part_state
from modelfetch.core.segments import contiguous_frontier

REPO = "TheOrg/Tiny-LM"
FILES = {
    "config.json": b'{"model_type": "llama"}\n',
    "tokenizer.json": b'{"vocab": [1, 2, 3]}\n',
    "a.safetensors": random_bytes(2_000_000, seed=71),
    "b.safetensors": random_bytes(6_000_000, seed=72),
}


@pytest.fixture
def emu() -> Iterator[HubEmulator]:
    with HubEmulator() as e:
        e.create_repo(REPO, FILES)
        yield e


def env_for(emu: HubEmulator, tmp_path: Path) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": emu.endpoint, "HF_HUB_CACHE": str(tmp_path / "hub")}
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "MODELFETCH_OFFLINE", "MODELFETCH_HF_CACHE"):
        env.pop(name, None)
    return env


def cli(
    cache: Path, env: dict[str, str], *args: str, ok: bool = True
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def test_get_all_prints_the_snapshot_dir_and_ls_verify_rm_handle_it(
    emu: HubEmulator, tmp_path: Path
) -> None:
    env, cache = env_for(emu, tmp_path), tmp_path / "cache"
    got = cli(cache, env, "get", f"hf://{REPO}", "--all", "--hf-cache")
    snap = Path(got.stdout.strip().splitlines()[-1])
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    assert snap == cache.resolve() / "snapshots" / "TheOrg--Tiny-LM" / commit
    assert {p: (snap / p).read_bytes() for p in FILES} == FILES
    assert re.search(r"4/4 files: 100%", got.stderr)  # one aggregate bar
    assert "4 files" in got.stderr and "every file verified" in got.stderr
    hf_snap = tmp_path / "hub" / "models--TheOrg--Tiny-LM" / "snapshots" / commit
    assert {p: (hf_snap / p).read_bytes() for p in FILES} == FILES  # --hf-cache: default place

    summary = json.loads(cli(cache, env, "get", f"hf://{REPO}", "--all", "--json").stdout)
    assert summary["path"] == str(snap) and summary["commit"] == commit
    assert summary["counts"] == {"cached": 4, "downloaded": 0, "adopted": 0}
    assert sorted(f["path"] for f in summary["files"]) == sorted(FILES)

    listing = cli(cache, env, "ls").stdout
    assert f"{REPO}@{commit[:12]} (main)" in listing and str(snap) in listing
    snaps = json.loads(cli(cache, env, "ls", "--snapshots", "--json").stdout)
    assert [(s["repo_id"], s["files"]) for s in snaps] == [(REPO, 4)]
    verify = cli(cache, env, "verify").stdout
    assert "5 ok, 0 bad" in verify  # 4 entries and the snapshot
    one = cli(cache, env, "verify", str(snap)).stdout
    assert f"OK  snapshot {REPO}@{commit[:12]}: ok" in one and "5 ok, 0 bad" in one

    gone = json.loads(cli(cache, env, "rm", str(snap), "--json").stdout)["removed"]
    assert len(gone) == 4 and not snap.exists()
    assert json.loads(cli(cache, env, "ls", "--json").stdout) == []
    assert hf_snap.is_dir() and (hf_snap / "b.safetensors").read_bytes() == FILES["b.safetensors"]


def test_bad_repository_arguments_are_one_line(emu: HubEmulator, tmp_path: Path) -> None:
    env, cache = env_for(emu, tmp_path), tmp_path / "cache"
    for args in (
        ["get", f"hf://{REPO}/config.json", "--all"],
        ["get", f"hf://{REPO}", "--include", "*.gguf"],
        ["get", "hf://TheOrg/Missing", "--all"],
        ["get", f"hf://{REPO}@nope", "--all"],
    ):
        proc = cli(cache, env, *args, ok=False)
        assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def part_progress(cache: Path, commit: str, path: str) -> int:
    src = ModelSource.huggingface(REPO, path, commit)
    state_path = cache / "entries" / src.entry_dir_name / (src.file_name + ".part.json")
    state = load_part_state(state_path, src.cache_key)
    return 0 if state is None else contiguous_frontier(state.segment_list())


def test_kill_9_in_the_middle_of_a_repository_resumes_what_was_there(
    emu: HubEmulator, tmp_path: Path
) -> None:
    env, cache = env_for(emu, tmp_path), tmp_path / "cache"
    commit = emu.resolve(REPO, "main").oid  # type: ignore[union-attr]
    emu.cdn.rate = 2_000_000.0  # 4 s for b.safetensors on one connection
    victim = subprocess.Popen(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), "get",
         f"hf://{REPO}", "--all", "-j", "1", "-q"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while part_progress(cache, commit, "b.safetensors") < 1_000_000:
            assert victim.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        os.kill(victim.pid, signal.SIGKILL)
    finally:
        victim.kill()
        victim.wait()
    kept = part_progress(cache, commit, "b.safetensors")
    before = len(emu.cdn.log)
    emu.cdn.rate = None
    got = cli(cache, env, "get", f"hf://{REPO}", "--all", "--json")
    summary = json.loads(got.stdout)
    assert summary["counts"] == {"cached": 3, "downloaded": 1, "adopted": 0}
    snap = Path(summary["path"])
    assert {p: (snap / p).read_bytes() for p in FILES} == FILES
    rerun = emu.cdn.log[before:]
    assert len(rerun) == 1  # only the unfinished file, and only what it lacked
    assert (rerun[0].header("Range") or "").startswith(f"bytes={kept}-")
    assert rerun[0].body_bytes == len(FILES["b.safetensors"]) - kept


def test_unwritable_places_are_one_line_errors(emu: HubEmulator, tmp_path: Path) -> None:
    env, cache = env_for(emu, tmp_path), tmp_path / "cache"
    not_a_dir = tmp_path / "a-file"
    not_a_dir.write_text("x")
    proc = cli(cache, env, "get", f"hf://{REPO}", "--all", f"--hf-cache={not_a_dir}", ok=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Hugging Face cache" in proc.stderr and emu.cdn.log == []  # before any download
    squatted = tmp_path / "cache-2"
    squatted.mkdir()
    (squatted / "snapshots").write_text("not a directory")
    proc = cli(squatted, env, "get", f"hf://{REPO}", "--all", "-q", ok=False)
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert (squatted / "snapshots").read_text() == "not a directory"  # left alone
