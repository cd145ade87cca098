"""The modelfetch command, run as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource


def run(cache_dir: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache_dir), *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_get_ls_info_verify_rm(
    server: FaultServer, cache_dir: Path, blob: bytes, blob_sha: str
) -> None:
    url = server.add("/cli/model.gguf", Resource(blob))
    got = run(cache_dir, "get", url, "--sha256", blob_sha)
    path = Path(got.stdout.strip())
    assert path.read_bytes() == blob
    assert "downloading" in got.stderr or "B/s" in got.stderr  # progress bar shown
    hit = run(cache_dir, "get", url, "--json")
    assert json.loads(hit.stdout)["sha256"] == blob_sha and "cache hit" in hit.stderr
    assert len(server.requests_for("/cli/model.gguf")) == 1

    listing = json.loads(run(cache_dir, "ls", "--json").stdout)
    assert [e["sha256"] for e in listing] == [blob_sha]
    key = listing[0]["cache_key"]
    assert key[:12] in run(cache_dir, "ls").stdout
    info = json.loads(run(cache_dir, "info", key[:10], "--json").stdout)
    assert info[0]["path"] == str(path)
    verify = run(cache_dir, "verify")
    assert "1 ok, 0 bad" in verify.stdout
    gone = json.loads(run(cache_dir, "rm", url, "--json").stdout)["removed"]
    assert [e["sha256"] for e in gone] == [blob_sha]
    assert json.loads(run(cache_dir, "ls", "--json").stdout) == []


def test_cache_only_miss_exit_code_and_message(server: FaultServer, cache_dir: Path) -> None:
    url = server.add("/cli/none.gguf", Resource(b"abc"))
    proc = run(cache_dir, "get", url, "--cache-only", ok=False)
    assert proc.returncode == 1
    assert "not in the cache" in proc.stderr and "Traceback" not in proc.stderr
    assert server.log == []


@pytest.mark.parametrize(
    "args, message",
    [
        (["get", "hf://o/r/../../etc/passwd"], "'..' segments"),
        (["get", "ftp://example.com/x"], "unsupported source scheme"),
        (["get", "http://127.0.0.1:1/x", "--sha256", "nothex"], "64 hexadecimal"),
        (["prune", "--max-bytes", "lots"], "not a size"),
        (["prune", "--max-age", "-5d"], "not a duration"),
        (["info", "0123456789"], "no cache entry"),
    ],
)
def test_bad_input_gets_clear_errors(cache_dir: Path, args: list[str], message: str) -> None:
    proc = run(cache_dir, *args, ok=False)
    assert proc.returncode in (1, 2)
    assert message in proc.stderr and "Traceback" not in proc.stderr


def test_verify_exit_code_on_corruption(server: FaultServer, cache_dir: Path, blob: bytes) -> None:
    url = server.add("/cli/v.gguf", Resource(blob))
    path = Path(run(cache_dir, "get", url, "-q").stdout.strip())
    with open(path, "r+b") as fh:
        fh.write(b"XXXX")
    proc = run(cache_dir, "verify", "--json", ok=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)[0]["ok"] is False
    assert not path.exists()


def test_prune_and_clear(server: FaultServer, cache_dir: Path, blob: bytes) -> None:
    for i in range(3):
        run(cache_dir, "get", server.add(f"/cli/{i}.gguf", Resource(blob[i:])), "-q")
    dry = json.loads(run(cache_dir, "prune", "--max-bytes", "3M", "--dry-run", "--json").stdout)
    assert len(dry["removed"]) == 2 and dry["dry_run"] is True
    assert len(json.loads(run(cache_dir, "ls", "--json").stdout)) == 3
    pruned = json.loads(run(cache_dir, "prune", "--max-bytes", "3M", "--json").stdout)
    assert len(pruned["removed"]) == 2
    refused = run(cache_dir, "clear", ok=False)  # no --yes and no terminal: aborts
    assert refused.returncode == 1
    assert len(json.loads(run(cache_dir, "ls", "--json").stdout)) == 1
    assert json.loads(run(cache_dir, "clear", "--yes", "--json").stdout) == {
        "removed": 1,
        "busy": 0,
    }
