"""Helpers for the hostile-cache suites: a cache with canaries beside it, the CLI as a real
subprocess, and the checks every command must pass whatever the cache looks like."""

from __future__ import annotations

import hashlib
import os
import re
import stat
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from devtools.fault_server import FaultServer
from modelfetch import ModelSource

# What a terminal would act on; escaped output never contains it (newlines separate lines).
UNPRINTABLE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\ud800-\udfff\u202a-\u202e]")


@dataclass
class World:
    """A cache root with one valid entry, and canary files beside it (never to change)."""

    tmp: Path
    root: Path
    outside: Path
    server: FaultServer
    url: str
    blob: bytes

    @property
    def source(self) -> ModelSource:
        return ModelSource.parse(self.url)

    @property
    def entry_dir(self) -> Path:
        return self.root / "entries" / self.source.entry_dir_name

    @property
    def model(self) -> Path:
        return self.entry_dir / self.source.file_name

    @property
    def sidecar(self) -> Path:
        return self.entry_dir / "metadata.json"

    @property
    def lock_file(self) -> Path:
        return self.root / "locks" / f"{self.source.entry_dir_name}.lock"

    def cli(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return run_cli(self.root, *args, timeout=timeout)

    def snapshot(self) -> dict[str, str]:
        return snapshot(self.tmp, skip=self.root)


def run_cli(
    root: Path, *args: str, timeout: float = 60, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    """``modelfetch --cache-dir root args...`` as a subprocess (``prefix`` runs it under
    another program, e.g. setpriv)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODELFETCH_", "HF_"))}
    return subprocess.run(
        [*prefix, sys.executable, "-m", "modelfetch", "--cache-dir", str(root), *args],
        capture_output=True,
        text=True,
        errors="surrogateescape",
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=env,
    )


def snapshot(base: Path, skip: Path) -> dict[str, str]:
    """Everything under ``base`` except ``skip``: type, content hash or link target."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(base):  # never follows links
        here = Path(dirpath)
        dirnames[:] = [n for n in dirnames if here / n != skip]
        for name in dirnames + filenames:
            path = here / name
            if path == skip:
                continue
            st = os.lstat(path)
            rel = str(path.relative_to(base))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                out[rel] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
            else:
                out[rel] = "dir" if stat.S_ISDIR(st.st_mode) else f"mode:{st.st_mode:o}"
    return out


def check_run(
    world: World, proc: subprocess.CompletedProcess[str], before: dict[str, str], args: list[str]
) -> None:
    """What every command owes a user, whatever the cache held."""
    where = f"{args}: rc={proc.returncode} stdout={proc.stdout!r} stderr={proc.stderr!r}"
    assert "Traceback" not in proc.stderr, where
    assert proc.returncode in (0, 1), where
    assert not UNPRINTABLE.search(proc.stdout + proc.stderr), where
    if proc.returncode == 1:
        verify_report = args[0] == "verify" and proc.stderr == "" and " bad" in proc.stdout
        if not verify_report:  # verify exits 1 with its report on stdout when it found bad
            lines = proc.stderr.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), where
    assert world.snapshot() == before, f"something outside the root changed: {where}"
    if args[0] == "get" and proc.returncode == 0:
        served = proc.stdout.strip().splitlines()[-1]
        real = os.path.realpath(served)
        assert Path(real).is_relative_to(os.path.realpath(world.root)), where
        assert Path(served).read_bytes() == world.blob, f"wrong bytes served: {where}"
