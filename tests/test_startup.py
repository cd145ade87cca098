"""Cheap cache hits: ``import modelfetch`` and a ``modelfetch get`` hit load neither click
nor the download machinery, and the hit prints exactly what the full command prints.

Behaviour, not timing: what a fresh interpreter has imported is read from ``sys.modules``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator
from modelfetch import EnsureOptions, ensure

HEAVY = {"urllib3", "filelock", "tqdm", "asyncio"}
SHARDS = [f"split-Q4_K_M-{i:05d}-of-00002.gguf" for i in (1, 2)]

# Runs the given entry point with argv, then writes the top-level names of every module the
# interpreter loaded (at exit, so it also sees what a SystemExit path loaded).
RECORD = """
import atexit, os, sys
def _dump():
    with open(os.environ["MF_MODULES_OUT"], "w") as fh:
        fh.write("\\n".join(sorted({m.split(".")[0] for m in sys.modules})))
atexit.register(_dump)
sys.argv = ["modelfetch", *sys.argv[1:]]
"""
LAUNCHER = RECORD + "import runpy; runpy.run_module('modelfetch', run_name='__main__')"
FULL_CLI = RECORD + "from modelfetch.cli import main; main(prog_name='modelfetch')"


def run_recording(
    code: str, args: list[str], tmp_path: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    out = tmp_path / "modules.txt"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        env={**os.environ, **(env or {}), "MF_MODULES_OUT": str(out)},
    )
    return proc, set(out.read_text().split())


def test_import_modelfetch_loads_no_heavy_module(tmp_path: Path) -> None:
    code = RECORD + (
        "import modelfetch\n"
        "assert all(getattr(modelfetch, name) is not None for name in modelfetch.__all__)\n"
        "assert callable(modelfetch.ensure) and modelfetch.Cache.__name__ == 'Cache'\n"
    )
    proc, modules = run_recording(code, [], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "modelfetch" in modules
    assert modules.isdisjoint({*HEAVY, "click", "platformdirs"}), modules & HEAVY


@pytest.fixture
def origin(server: FaultServer) -> FaultServer:
    """A model file and a split set of two shards, as plain URLs."""
    server.add("/plain/model.gguf", Resource(random_bytes(5000, seed=1)))
    for i, name in enumerate(SHARDS):
        server.add(f"/plain/{name}", Resource(random_bytes(3000 + i, seed=2 + i)))
    return server


def hit_cases(origin: FaultServer, sha: str, cache_dir: Path) -> dict[str, list[str]]:
    """Arguments of `modelfetch` that are hits; all name the cache with --cache-dir but the
    last, which relies on MODELFETCH_CACHE_DIR."""
    url = origin.url("/plain/model.gguf")
    root = ["--cache-dir", str(cache_dir)]
    return {
        "plain": [*root, "get", url],
        "json": [f"--cache-dir={cache_dir}", "get", url, "--json"],
        "quiet, cache-only, pinned": [*root, "get", "-q", "--cache-only", f"--sha256={sha}", url],
        "split set": [*root, "get", origin.url(f"/plain/{SHARDS[1]}")],
        "one shard": [*root, "get", "--no-shards", origin.url(f"/plain/{SHARDS[1]}")],
        "tag": [*root, "get", "hf://o/r:Q8_0"],
        "cache dir from the environment": ["get", url],
    }


def comparable(stdout: str) -> str:
    if not stdout.startswith("{"):
        return stdout
    doc = json.loads(stdout)
    doc.pop("last_used")  # the time of this very use
    return json.dumps(doc, sort_keys=True)


def test_cli_hit_skips_click_and_says_what_the_full_command_says(
    origin: FaultServer, hub: HubEmulator, cache_dir: Path, tmp_path: Path
) -> None:
    env = {"HF_ENDPOINT": hub.endpoint}
    hub.create_repo("o/r", {"model-Q8_0.gguf": random_bytes(4000, seed=9)})
    opts = EnsureOptions(cache_dir=cache_dir, hf_endpoint=hub.endpoint)
    sha = ensure(origin.url("/plain/model.gguf"), opts).sha256
    ensure(origin.url(f"/plain/{SHARDS[0]}"), opts)
    ensure("hf://o/r:Q8_0", opts)

    def requests() -> int:
        return len(origin.log) + len(hub.hub.requests()) + len(hub.cdn.requests())

    before = requests()
    for name, args in hit_cases(origin, sha, cache_dir).items():
        # --cache-dir must win over the environment
        env["MODELFETCH_CACHE_DIR"] = str(cache_dir if args[0] == "get" else tmp_path / "empty")
        fast, loaded = run_recording(LAUNCHER, args, tmp_path, env)
        full, full_loaded = run_recording(FULL_CLI, args, tmp_path, env)
        assert fast.returncode == full.returncode == 0, (name, fast.stderr, full.stderr)
        assert "click" in full_loaded  # the comparison really ran the full command
        assert loaded.isdisjoint({*HEAVY, "click"}), (name, loaded & {*HEAVY, "click"})
        assert comparable(fast.stdout) == comparable(full.stdout), name
        assert fast.stderr == full.stderr, name
        assert Path(json.loads(fast.stdout)["path"] if name == "json" else fast.stdout.strip())
    assert "cache hit" in fast.stderr
    assert requests() == before  # hits make no request, on either path


def test_cli_falls_back_to_the_full_command_when_not_a_plain_hit(
    origin: FaultServer, cache_dir: Path, tmp_path: Path
) -> None:
    env = {"MODELFETCH_CACHE_DIR": str(cache_dir)}
    url = origin.url("/plain/model.gguf")
    miss, loaded = run_recording(LAUNCHER, ["get", "-q", url], tmp_path, env)
    assert miss.returncode == 0, miss.stderr
    path = Path(miss.stdout.strip())
    assert path.read_bytes() == random_bytes(5000, seed=1) and "click" in loaded
    os.utime(path, ns=(0, 0))  # stat stamp changed: a lock and a re-hash are needed
    rehash, loaded = run_recording(LAUNCHER, ["get", url], tmp_path, env)
    assert rehash.returncode == 0 and rehash.stdout.strip() == str(path)
    assert "click" in loaded and "cache hit" in rehash.stderr
    bad, _ = run_recording(LAUNCHER, ["get", url, "--sha256", "00"], tmp_path, env)
    assert bad.returncode == 1 and "64 hexadecimal" in bad.stderr
    assert "Traceback" not in bad.stderr


@pytest.mark.parametrize(
    "argv, plain",
    [
        (["get", "x"], True),
        (["--cache-dir", "/c", "get", "--json", "x", "-q"], True),
        (["--cache-dir=/c", "get", "x", "--sha256=ab", "--no-shards", "--cache-only"], True),
        (["get", "x", "--refresh"], False),
        (["get", "x", "--token", "t"], False),
        (["get", "x", "y"], False),
        (["get", "--", "x"], False),
        (["get", "x", "--sha256"], False),
        (["--cache-dir=", "get", "x"], False),
        (["ls"], False),
        (["get"], False),
        ([], False),
    ],
)
def test_only_plain_get_forms_take_the_short_way(argv: list[str], plain: bool) -> None:
    from modelfetch.launcher import parse_plain_get

    assert (parse_plain_get(argv) is not None) is plain
