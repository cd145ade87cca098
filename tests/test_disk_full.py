"""Full and read-only filesystems, for real: small tmpfs and loop-mounted ext4 filesystems
(so these tests need root; they skip with the reason otherwise). A full disk anywhere gives
the one "not enough disk space" line and keeps what is safe to keep, and the next run after
space is freed succeeds; a read-only root still serves verified hits and refuses the rest
with one line. Every mount is undone in a finally."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import Cache, CacheMissError, EnsureOptions, ProgressEvent, ensure
from modelfetch.errors import DiskFullError, ReadOnlyCacheError

from .conftest import part_progress
from .hostile import World, check_run, run_cli

BLOB = random_bytes(2_500_000, seed=28)
SHA = hashlib.sha256(BLOB).hexdigest()


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _mount(args: list[str], mnt: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    mnt.mkdir()
    proc = _run("mount", *args, str(mnt))
    if proc.returncode != 0:
        pytest.skip(f"mount refused: {proc.stderr.strip()[:200]}")
    try:
        yield mnt
    finally:
        if _run("umount", str(mnt)).returncode != 0:
            _run("umount", "-l", str(mnt))


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    yield from _mount(["-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs"], tmp_path / "mnt")


@pytest.fixture
def ext4(tmp_path: Path) -> Iterator[Path]:
    if shutil.which("mkfs.ext4") is None:
        pytest.skip("mkfs.ext4 (e2fsprogs) is not installed")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as fh:
        fh.truncate(16 * 1024 * 1024)
    proc = _run("mkfs.ext4", "-q", "-F", "-m", "0", str(image))
    if proc.returncode != 0:
        pytest.skip(f"mkfs.ext4 failed: {proc.stderr.strip()[:200]}")
    yield from _mount(["-o", "loop", str(image)], tmp_path / "mnt")


@pytest.fixture(params=["tmpfs", "ext4"])
def small_fs(request: pytest.FixtureRequest) -> Path:
    return Path(request.getfixturevalue(request.param))


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill(mnt: Path, leave: int) -> Path:
    """Take all free space but ``leave`` bytes with a real file (deleted to free it)."""
    filler = mnt / "filler"
    with open(filler, "ab") as fh:
        take = free_bytes(mnt) - leave
        if take > 0:
            os.posix_fallocate(fh.fileno(), fh.seek(0, os.SEEK_END), take)
    return filler


def _one_clear_line(proc: subprocess.CompletedProcess[str], text: str) -> None:
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and text in lines[0], proc.stderr


# -- ENOSPC ----------------------------------------------------------------------------------
def test_body_without_content_length_fills_the_disk(small_fs: Path, server: FaultServer) -> None:
    """No Content-Length means nothing to preallocate: the disk fills while writing."""
    url = server.add("/full/model.gguf", Resource(BLOB, content_length=False))
    root = small_fs / "cache"
    filler = fill(small_fs, 1024 * 1024)
    _one_clear_line(run_cli(root, "get", url, "-q"), "not enough disk space")
    filler.unlink()
    proc = run_cli(root, "get", url, "-q")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == BLOB


def test_next_run_resumes_what_was_safe_to_keep(tmpfs: Path, server: FaultServer) -> None:
    url = server.add("/full/resume.gguf", Resource(BLOB, drop_after=[1_000_000]))
    root = tmpfs / "cache"
    with pytest.raises(Exception):  # the connection drops; nothing retries
        ensure(url, EnsureOptions(cache_dir=root, max_retries=0))
    kept = part_progress(root, url)
    assert kept > 0
    filler = fill(tmpfs, 0)
    _one_clear_line(run_cli(root, "get", url, "-q"), "not enough disk space")
    assert part_progress(root, url) >= kept  # the checkpoint survived the failure
    filler.unlink()
    proc = run_cli(root, "get", url, "-q")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == BLOB
    last = server.requests_for("/full/resume.gguf")[-1].headers
    assert int(last["Range"].removeprefix("bytes=").split("-")[0]) >= kept


def test_exact_fit_fails_at_once_and_is_fetched_after_space_is_freed(
    tmpfs: Path, server: FaultServer
) -> None:
    """The file fits the free space exactly; its checkpoint and sidecar do not."""
    root = tmpfs / "cache"
    Cache(root).prepare()  # the layout and its tag take their space first
    filler = fill(tmpfs, 1024 * 1024)
    exact = random_bytes(free_bytes(tmpfs), seed=3)
    url = server.add("/full/exact.gguf", Resource(exact))
    with pytest.raises(DiskFullError, match="not enough disk space"):
        ensure(url, EnsureOptions(cache_dir=root))
    _one_clear_line(run_cli(root, "get", url, "-q"), "not enough disk space")
    filler.unlink()
    proc = run_cli(root, "get", url, "-q")
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()).read_bytes() == exact


def _filler_at(mnt: Path, when: str) -> tuple[list[Path], object]:
    """A progress callback that fills the disk at one moment of a download."""
    made: list[Path] = []

    def on_event(ev: ProgressEvent) -> None:
        hit = (when == "start" and ev.kind == "start") or (
            when == "complete"
            and ev.kind == "progress"
            and ev.bytes_total
            and ev.bytes_done == ev.bytes_total
        )
        if hit and not made:
            made.append(fill(mnt, 0))

    return made, on_event


def test_part_state_write_failing(tmpfs: Path, server: FaultServer) -> None:
    """The body fits its preallocated part; the checkpoint (.part.json) cannot be written."""
    url = server.add("/full/state.gguf", Resource(BLOB))
    root = tmpfs / "cache"
    made, on_event = _filler_at(tmpfs, "start")
    with pytest.raises(DiskFullError, match="not enough disk space"):
        ensure(url, EnsureOptions(cache_dir=root, progress=on_event))  # type: ignore[arg-type]
    assert made and Cache(root).list() == []
    made[0].unlink()
    entry = ensure(url, EnsureOptions(cache_dir=root))
    assert entry.path.read_bytes() == BLOB and entry.sha256 == SHA


def test_sidecar_write_failing_keeps_the_file_as_a_part(tmpfs: Path, tmp_path: Path) -> None:
    """The file is complete and renamed into place; then the sidecar cannot be written."""
    source = tmp_path / "weights.safetensors"
    source.write_bytes(BLOB)
    root = tmpfs / "cache"
    made, on_event = _filler_at(tmpfs, "complete")
    with pytest.raises(DiskFullError, match="not enough disk space"):
        ensure(source, EnsureOptions(cache_dir=root, progress=on_event))  # type: ignore[arg-type]
    assert made
    entry_dir = next((root / "entries").iterdir())
    assert not (entry_dir / "weights.safetensors").exists()  # never a file without sidecar
    assert Cache(root).list() == []
    made[0].unlink()
    entry = ensure(source, EnsureOptions(cache_dir=root))
    assert entry.path.read_bytes() == BLOB and Cache(root).list() == [entry]


def _world(mnt: Path, tmp_path: Path, server: FaultServer) -> World:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("must never change")
    url = server.add("/full/entry.gguf", Resource(BLOB))
    root = mnt / "cache"
    ensure(url, EnsureOptions(cache_dir=root))
    return World(tmp_path, root, outside, server, url, BLOB)


FULL_DISK_COMMANDS = [
    (["get", "{url}", "-q"], 0),
    (["get", "{url}", "--sha256", SHA, "-q"], 0),
    (["get", "{other}", "-q"], 1),
    (["ls"], 0),
    (["info", "{url}"], 0),
    (["verify"], 0),
    (["prune", "--max-age", "30d"], 0),
    (["rm", "{url}"], 0),
    (["clear", "--yes"], 0),
]


@pytest.mark.parametrize("args, rc", FULL_DISK_COMMANDS, ids=lambda a: str(a))
def test_every_command_on_a_full_disk(
    tmpfs: Path, tmp_path: Path, server: FaultServer, args: list[str], rc: int
) -> None:
    world = _world(tmpfs, tmp_path, server)
    other = server.add("/full/other.gguf", Resource(BLOB[::-1]))
    os.utime(world.model)  # a hit must re-hash and would like to rewrite the sidecar
    fill(tmpfs, 0)
    argv = [a.format(url=world.url, other=other) for a in args]
    before = world.snapshot()
    proc = world.cli(*argv)
    check_run(world, proc, before, argv)
    assert proc.returncode == rc, proc.stderr
    if rc:
        assert "not enough disk space" in proc.stderr


# -- read-only root --------------------------------------------------------------------------
READ_ONLY_COMMANDS = [
    (["get", "{url}", "-q"], 0, ""),
    (["get", "{url}", "--cache-only", "-q"], 0, ""),
    (["get", "{stale}", "-q"], 0, ""),  # needs a re-hash: verified without any write
    (["get", "{stale}", "--sha256", SHA, "--cache-only", "-q"], 0, ""),
    (["get", "{other}", "-q"], 1, "is read-only"),
    (["get", "{other}", "--cache-only", "-q"], 1, "not in the cache"),
    (["get", "{url}", "--refresh", "-q"], 1, "is read-only"),
    (["ls"], 0, ""),
    (["info", "{url}"], 0, ""),
    (["verify"], 1, "is read-only"),
    (["prune"], 1, "is read-only"),
    (["prune", "--dry-run"], 0, ""),
    (["rm", "{url}"], 1, "is read-only"),
    (["clear", "--yes"], 1, "is read-only"),
]


@pytest.mark.parametrize("args, rc, text", READ_ONLY_COMMANDS, ids=lambda a: str(a))
def test_every_command_on_a_read_only_root(
    tmpfs: Path, tmp_path: Path, server: FaultServer, args: list[str], rc: int, text: str
) -> None:
    world = _world(tmpfs, tmp_path, server)
    stale = server.add("/full/stale.gguf", Resource(BLOB))
    stale_entry = ensure(stale, EnsureOptions(cache_dir=world.root))
    os.utime(stale_entry.path)  # its stamp no longer proves it: the hit must re-hash
    other = server.add("/full/other.gguf", Resource(BLOB[::-1]))
    assert _run("mount", "-o", "remount,ro", str(tmpfs)).returncode == 0
    argv = [a.format(url=world.url, stale=stale, other=other) for a in args]
    before = world.snapshot()
    proc = world.cli(*argv)
    check_run(world, proc, before, argv)
    assert proc.returncode == rc, proc.stderr
    if rc:
        assert text in proc.stderr
    assert len(server.requests_for("/full/other.gguf")) == 0


def test_read_only_root_through_the_api(tmpfs: Path, server: FaultServer) -> None:
    url = server.add("/full/ro.gguf", Resource(BLOB))
    root = tmpfs / "cache"
    entry = ensure(url, EnsureOptions(cache_dir=root))
    os.utime(entry.path)
    sidecar = (entry.directory / "metadata.json").read_bytes()
    assert _run("mount", "-o", "remount,ro", str(tmpfs)).returncode == 0
    opts = EnsureOptions(cache_dir=root)
    assert ensure(url, opts).sha256 == SHA  # degraded to a read-only verification
    assert ensure(url, opts, sha256=SHA, policy="cache_only").path == entry.path
    assert Cache(root).get(url, sha256=SHA) is not None
    assert (entry.directory / "metadata.json").read_bytes() == sidecar  # nothing written
    with pytest.raises(CacheMissError):
        ensure(url, opts, sha256="0" * 64, policy="cache_only")
    assert entry.path.exists()  # a doubtful entry is a miss, but nothing is deleted
    for call in (
        lambda: ensure(url, opts, policy="refresh"),
        lambda: ensure(url + "?v=2", opts),
        lambda: Cache(root).verify(),
        lambda: Cache(root).prune(),
        lambda: Cache(root).clear(),
        lambda: Cache(root).remove(url),
    ):
        with pytest.raises(ReadOnlyCacheError, match="is read-only"):
            call()


# Root without the capabilities that let it ignore file modes: the cache's modes apply.
_NO_OVERRIDE = ("setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--")

UNWRITABLE_COMMANDS = [
    (["get", "{url}", "-q"], 0, ""),
    (["get", "{stale}", "-q"], 0, ""),
    (["get", "{other}", "-q"], 1, "is not writable (Permission denied)"),
    (["ls"], 0, ""),
    (["verify"], 1, "is not writable (Permission denied)"),
    (["clear", "--yes"], 1, "is not writable (Permission denied)"),
]


@pytest.mark.parametrize("args, rc, text", UNWRITABLE_COMMANDS, ids=lambda a: str(a))
def test_root_not_writable_by_this_user(
    tmp_path: Path, server: FaultServer, args: list[str], rc: int, text: str
) -> None:
    """A shared cache someone else populated: its modes forbid writing (EACCES, not EROFS)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capability that ignores file modes")
    world = _world(tmp_path / "shared", tmp_path, server)
    stale = server.add("/full/stale.gguf", Resource(BLOB))
    stale_path = ensure(stale, EnsureOptions(cache_dir=world.root)).path
    other = server.add("/full/other.gguf", Resource(BLOB[::-1]))
    _chmod_files(world.root, 0o444)  # changes the files' ctime: stamps are refreshed next
    for src in (world.url, stale):
        assert Cache(world.root).get(src) is not None
    for sidecar in world.root.glob("entries/*/metadata.json"):  # rewritten by get()
        os.chmod(sidecar, 0o444)  # (the model files keep the ctime their stamps record)
    os.utime(stale_path)  # this one must be re-hashed by the read-only lookup
    for dirpath, _dirs, _files in os.walk(world.root):
        os.chmod(dirpath, 0o555)
    try:
        argv = [a.format(url=world.url, stale=stale, other=other) for a in args]
        before = world.snapshot()
        proc = run_cli(world.root, *argv, prefix=_NO_OVERRIDE)
        if "setpriv" in proc.stderr and proc.returncode != 0 and "Traceback" not in proc.stderr:
            pytest.skip(f"setpriv refused: {proc.stderr.strip()[:200]}")
        check_run(world, proc, before, argv)
        assert proc.returncode == rc, proc.stderr
        if rc:
            assert text in proc.stderr
    finally:
        for dirpath, _dirs, _files in os.walk(world.root):
            os.chmod(dirpath, 0o755)


def _chmod_files(root: Path, mode: int) -> None:
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            os.chmod(Path(dirpath) / name, mode)
