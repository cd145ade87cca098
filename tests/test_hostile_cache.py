"""Every CLI command against caches nobody here wrote: links at every level of the root,
wrong file types where the cache expects its own files, control characters, foreign and
lying sidecars. Whatever the cache holds, a command exits 0 or 1 with at most one line on
stderr, never shows a traceback, never prints a raw control character, never creates or
changes a file outside the root (canaries beside it) and never serves wrong bytes."""

from __future__ import annotations

import json
import os
import shutil
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devtools.fault_server import FaultServer, Resource
from devtools.genmodel import random_bytes
from modelfetch import Cache, EnsureOptions, ensure

from .hostile import World, check_run, run_cli

BLOB = random_bytes(256 * 1024, seed=71)


@pytest.fixture
def world(tmp_path: Path, server: FaultServer) -> Iterator[World]:
    root = tmp_path / "cache"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "canary.txt").write_text("must never change")
    (outside / "secret.gguf").write_bytes(bytes(len(BLOB)))  # same size, wrong bytes
    url = server.add("/models/model.gguf", Resource(BLOB))
    ensure(url, EnsureOptions(cache_dir=root))
    yield World(tmp_path, root, outside, server, url, BLOB)


def _move_out(world: World, name: str) -> Path:
    """Move a layout directory beside the root (stat stamps intact) and link it back."""
    moved = world.outside / f"moved-{name}"
    src = world.root / name
    if src.exists():
        os.rename(src, moved)
    else:
        moved.mkdir()
        (moved / "canary.txt").write_text("outside")
    src.symlink_to(moved, target_is_directory=True)
    return moved


def _needs_lock(world: World) -> None:
    """Change the model's stat stamp (not its bytes) so a hit must lock and re-hash."""
    os.utime(world.model)


# -- refused roots: a layout directory that is a link or not a directory ------------------
def entries_symlink(w: World) -> None:
    _move_out(w, "entries")


def locks_symlink(w: World) -> None:
    _move_out(w, "locks")


def transient_symlink(w: World) -> None:
    _move_out(w, "transient")


def sets_symlink(w: World) -> None:
    _move_out(w, "sets")


def refs_symlink(w: World) -> None:
    _move_out(w, "refs")


def entries_is_file(w: World) -> None:
    os.rename(w.root / "entries", w.outside / "old-entries")
    (w.root / "entries").write_text("not a directory")


def locks_is_fifo(w: World) -> None:
    shutil.rmtree(w.root / "locks")
    os.mkfifo(w.root / "locks")


def root_is_file(w: World) -> None:
    os.rename(w.root, w.outside / "old-root")
    w.root.write_text("not a directory")


def root_symlink_loop(w: World) -> None:
    os.rename(w.root, w.outside / "old-root")
    w.root.symlink_to(w.root)


# -- repaired inside the root: our file names holding the wrong type ---------------------
def tag_dangling_symlink(w: World) -> None:
    (w.root / "CACHEDIR.TAG").unlink()
    (w.root / "CACHEDIR.TAG").symlink_to(w.outside / "created-by-tag")
    _needs_lock(w)  # the slow path prepares the root, and writes a missing tag


def tag_symlink_to_canary(w: World) -> None:
    (w.root / "CACHEDIR.TAG").unlink()
    (w.root / "CACHEDIR.TAG").symlink_to(w.outside / "canary.txt")
    _needs_lock(w)  # the slow path prepares the root, and writes a missing tag


def tag_fifo(w: World) -> None:
    (w.root / "CACHEDIR.TAG").unlink()
    os.mkfifo(w.root / "CACHEDIR.TAG")
    _needs_lock(w)  # the slow path prepares the root, and writes a missing tag


def entry_dir_symlink(w: World) -> None:
    moved = w.outside / "moved-entry"
    os.rename(w.entry_dir, moved)
    w.entry_dir.symlink_to(moved, target_is_directory=True)


def model_symlink(w: World) -> None:
    w.model.unlink()
    w.model.symlink_to(w.outside / "secret.gguf")


def model_dir(w: World) -> None:
    w.model.unlink()
    w.model.mkdir()
    (w.model / "inner").write_text("x")


def model_fifo(w: World) -> None:
    w.model.unlink()
    os.mkfifo(w.model)


def sidecar_dir(w: World) -> None:
    w.sidecar.unlink()
    w.sidecar.mkdir()


def sidecar_fifo(w: World) -> None:
    w.sidecar.unlink()
    os.mkfifo(w.sidecar)


def sidecar_symlink(w: World) -> None:
    copy = w.outside / "sidecar-copy.json"
    copy.write_bytes(w.sidecar.read_bytes())
    w.sidecar.unlink()
    w.sidecar.symlink_to(copy)


def part_dirs(w: World) -> None:
    """A download must start, and finds directories where its part and state go."""
    w.model.unlink()
    w.sidecar.unlink()
    (w.entry_dir / "model.gguf.part").mkdir()
    (w.entry_dir / "model.gguf.part.json").mkdir()
    (w.entry_dir / "model.gguf.part.json" / "x").write_text("x")


def part_fifos(w: World) -> None:
    w.model.unlink()
    w.sidecar.unlink()
    os.mkfifo(w.entry_dir / "model.gguf.part")
    os.mkfifo(w.entry_dir / "model.gguf.part.json")


def part_symlinks(w: World) -> None:
    w.model.unlink()
    w.sidecar.unlink()
    (w.entry_dir / "model.gguf.part").symlink_to(w.outside / "canary.txt")
    (w.entry_dir / "model.gguf.part.json").symlink_to(w.outside / "part-state-here")


def lock_symlink_to_canary(w: World) -> None:
    w.lock_file.unlink(missing_ok=True)
    w.lock_file.symlink_to(w.outside / "canary.txt")
    _needs_lock(w)


def lock_dangling_symlink(w: World) -> None:
    w.lock_file.unlink(missing_ok=True)
    w.lock_file.symlink_to(w.outside / "lock-created-here")
    _needs_lock(w)


def lock_dir(w: World) -> None:
    w.lock_file.unlink(missing_ok=True)
    w.lock_file.mkdir()
    _needs_lock(w)


def lock_fifo(w: World) -> None:
    w.lock_file.unlink(missing_ok=True)
    os.mkfifo(w.lock_file)
    _needs_lock(w)


def _mknod_zero(path: Path) -> None:
    """A character device like /dev/zero (reading it would never end)."""
    path.unlink(missing_ok=True)
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
    except (PermissionError, OSError) as exc:
        pytest.skip(f"cannot create a device node here: {exc.strerror}")


def model_device(w: World) -> None:
    _mknod_zero(w.model)


def device_nodes(w: World) -> None:
    """Device nodes at the sidecar, part, part state and lock file names."""
    for path in (
        w.sidecar,
        w.entry_dir / "model.gguf.part",
        w.entry_dir / "model.gguf.part.json",
        w.lock_file,
    ):
        _mknod_zero(path)
    _needs_lock(w)


# -- lying sidecars ------------------------------------------------------------------------
def _edit_sidecar(w: World, **changes: object) -> None:
    doc = json.loads(w.sidecar.read_text())
    doc.update(changes)
    w.sidecar.write_text(json.dumps(doc))


def sidecar_bytes_lie(w: World) -> None:
    _edit_sidecar(w, bytes=len(w.blob) - 1)  # the stamp still matches the file


def sidecar_foreign(w: World) -> None:
    _edit_sidecar(w, cache_key="e" * 64)


def sidecar_control_chars(w: World) -> None:
    _edit_sidecar(
        w,
        source="\x1b]0;owned\x07\x1b[2J\x1b[31mred\r\nfake line\u202eevil\x9b\udcff",
        etag='"\x1b[5mblink"',
        last_modified="\x00\x08\x7f",
    )


REFUSED: list[Callable[[World], None]] = [
    entries_symlink,
    locks_symlink,
    transient_symlink,
    sets_symlink,
    refs_symlink,
    entries_is_file,
    locks_is_fifo,
    root_is_file,
    root_symlink_loop,
]
REPAIRED: list[Callable[[World], None]] = [
    tag_dangling_symlink,
    tag_symlink_to_canary,
    tag_fifo,
    entry_dir_symlink,
    model_symlink,
    model_dir,
    model_fifo,
    sidecar_dir,
    sidecar_fifo,
    sidecar_symlink,
    part_dirs,
    part_fifos,
    part_symlinks,
    lock_symlink_to_canary,
    lock_dangling_symlink,
    lock_dir,
    lock_fifo,
    model_device,
    device_nodes,
    sidecar_bytes_lie,
    sidecar_foreign,
    sidecar_control_chars,
]

COMMANDS: dict[str, list[str]] = {
    "get": ["get", "{url}", "-q"],
    "get-cache-only": ["get", "{url}", "--cache-only", "-q"],
    "ls": ["ls"],
    "info": ["info", "{url}"],
    "verify": ["verify"],
    "prune": ["prune", "--max-age", "30d"],
    "rm": ["rm", "{url}"],
    "clear": ["clear", "--yes"],
}


def _run(world: World, command: str) -> tuple[list[str], int, str]:
    args = [a.format(url=world.url) for a in COMMANDS[command]]
    before = world.snapshot()
    proc = world.cli(*args)
    check_run(world, proc, before, args)
    return args, proc.returncode, proc.stderr


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("scenario", REFUSED, ids=lambda f: f.__name__)
def test_unsafe_root_is_refused_by_every_command(
    world: World, scenario: Callable[[World], None], command: str
) -> None:
    scenario(world)
    _, rc, stderr = _run(world, command)
    assert rc == 1
    assert any(t in stderr for t in ("is unsafe", "is not a directory", "cannot be resolved"))


@pytest.mark.parametrize("command", sorted(COMMANDS))
@pytest.mark.parametrize("scenario", REPAIRED, ids=lambda f: f.__name__)
def test_hostile_entry_never_breaks_a_command(
    world: World, scenario: Callable[[World], None], command: str
) -> None:
    scenario(world)
    _, rc, _ = _run(world, command)
    if command == "get":
        assert rc == 0  # repaired, or downloaded again: the right bytes either way
        (entry,) = Cache(world.root).list()
        assert entry.path.read_bytes() == world.blob and entry.bytes == len(world.blob)
    if command == "clear":
        assert rc == 0 and Cache(world.root).list() == []


# -- what is printed -----------------------------------------------------------------------
def test_ls_info_and_errors_escape_control_characters(world: World) -> None:
    sidecar_control_chars(world)
    listed = world.cli("ls")
    assert listed.returncode == 0
    assert "\\x1b]0;owned\\x07\\x1b[2J" in listed.stdout and "\\u202eevil" in listed.stdout
    assert "\\x9b" in listed.stdout and "\\udcff" in listed.stdout
    assert len(listed.stdout.splitlines()) == 2  # header + one entry: no faked line
    info = world.cli("info", world.url)
    assert info.returncode == 0 and "\\x1b[5mblink" in info.stdout
    as_json = json.loads(world.cli("ls", "--json").stdout)
    assert as_json[0]["source"].startswith("\x1b]0;owned")  # JSON keeps the value, escaped
    bad = world.cli("info", "\x1b[31mnothing")
    assert bad.returncode == 1 and "\x1b" not in bad.stderr


def test_printable_escapes_c0_del_c1_surrogates_and_bidi() -> None:
    from modelfetch.redact import printable

    assert printable("a\x00\x1b\n\t\x7f\x80\x9f\udcff\u202e\u2028b") == (
        "a\\x00\\x1b\\x0a\\x09\\x7f\\x80\\x9f\\udcff\\u202e\\u2028b"
    )
    assert printable("plain ascii, ünïcödé") == "plain ascii, ünïcödé"


# -- what is stored ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "headers",
    [
        {"etag": '"' + "a" * 50_000 + '"'},
        {"etag": '"\x1b[31m"'},
        {"etag": '"' + "b" * 2000 + '"', "last_modified": "x" * 40_000},
    ],
    ids=["50KB-etag", "control-etag", "huge-both"],
)
def test_odd_server_validators_still_give_a_readable_sidecar(
    server: FaultServer, tmp_path: Path, headers: dict[str, str]
) -> None:
    url = server.add("/odd/model.gguf", Resource(BLOB, **headers))  # type: ignore[arg-type]
    root = tmp_path / "c"
    got = run_cli(root, "get", url, "-q")
    assert got.returncode == 0, got.stderr
    listed = json.loads(run_cli(root, "ls", "--json").stdout)
    assert [e["bytes"] for e in listed] == [len(BLOB)]  # today: downloaded, then not listed
    assert listed[0]["etag"] is None or len(listed[0]["etag"]) <= 1024
    entry = ensure(url, EnsureOptions(cache_dir=root), policy="cache_only")
    assert entry.path.read_bytes() == BLOB and Cache(root).list() == [entry]
    refreshed = ensure(url, EnsureOptions(cache_dir=root), policy="refresh")
    assert refreshed.path.read_bytes() == BLOB


@pytest.mark.parametrize("name", ["metadata.json", "weights.part", "weights.part.json"])
def test_source_named_like_a_cache_file_gets_its_own_name(
    server: FaultServer, tmp_path: Path, name: str
) -> None:
    url = server.add(f"/odd/{name}", Resource(BLOB))
    root = tmp_path / "c"
    first = ensure(url, EnsureOptions(cache_dir=root))
    assert first.path.name != name and first.path.read_bytes() == BLOB
    assert Cache(root).list() == [first]
    again = ensure(url, EnsureOptions(cache_dir=root), policy="cache_only")
    assert again.path == first.path
    assert len(server.requests_for(f"/odd/{name}")) == 1


def test_shard_name_decoding_to_a_path_is_refused(server: FaultServer, tmp_path: Path) -> None:
    url = server.url("/odd/..%2F..%2F..%2Fescape-00001-of-00002.gguf")
    proc = run_cli(tmp_path / "c", "get", url, "-q")
    assert proc.returncode == 1 and "not a plain file name" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not any(p.name.startswith("escape") for p in tmp_path.rglob("*"))
    assert server.log == []


def test_server_text_in_an_error_is_escaped(server: FaultServer, tmp_path: Path) -> None:
    """A redirect's Location is the server's text; it ends up in the error line."""
    target = "http://127.0.0.1:1/\x1b]0;owned\x07\x1b[2Jx.gguf"
    url = server.add("/odd/redirect.gguf", Resource(b"", redirect_to=target))
    proc = run_cli(tmp_path / "c", "get", url, "--retries", "0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "\x1b" not in line and "\\x1b]0;owned\\x07" in line
