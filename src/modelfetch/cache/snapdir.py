"""modelfetch's own snapshot directories: a whole repository at a commit, as links.

    <root>/snapshots/<owner>--<repo>/<commit>/<repo path>   relative symlinks to entry files

Every file of a snapshot is an ordinary cache entry; the snapshot directory only gathers
them under their repository paths, which is what transformers, vLLM and llama.cpp want to
be pointed at. A snapshot directory is built complete under a temporary name beside its
final one and then renamed into place (swapped atomically with an older one, on Linux), so
nobody ever sees a partial one. Publishing again at the same commit keeps the files already
there (whose entries still exist) and adds the new ones.

A snapshot whose entry has gone (``rm``, ``prune``, ``verify`` removing a corrupt file) is
removed as a whole: a snapshot missing a file is not a snapshot. Cache code never follows
these links; they exist for the consumers of the files.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import storage_error
from ..fsutil import fsync_dir, remove_any, temp_sibling
from .layout import SNAPSHOTS, Layout

MAX_WALK = 200_000  # links in one snapshot; a bound on walking a hostile tree
STALE_TMP_SECONDS = 3600.0
_REPO_DIR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}--[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_COMMIT_DIR = re.compile(r"^[0-9a-f]{40}$")
_TMP = re.compile(r"^\.[0-9a-f]{40}\.\d+\.[0-9a-f]{8}\.tmp$")
_RENAME_EXCHANGE = 2


@dataclass(frozen=True)
class SnapshotDir:
    repo_id: str
    commit: str
    path: Path
    files: dict[str, Path]  # repo path -> the entry file it links to (absolute)


def repo_folder(root: Path, repo_id: str) -> Path:
    return root / SNAPSHOTS / repo_id.replace("/", "--")


def snapshot_path(root: Path, repo_id: str, commit: str) -> Path:
    return repo_folder(root, repo_id) / commit


def _is_real_dir(path: Path) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def read_links(folder: Path) -> dict[str, Path] | None:
    """Repo path -> absolute link target, for a snapshot directory made only of symlinks
    and folders. None if anything else is in it, or a link dangles."""
    links: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in [*filenames, *dirnames]:
            full = Path(dirpath) / name
            st = os.lstat(full)
            if stat.S_ISDIR(st.st_mode):
                continue
            if not stat.S_ISLNK(st.st_mode):
                return None
            target = Path(os.path.normpath(full.parent / os.readlink(full)))
            if not os.path.lexists(target):
                return None
            links[full.relative_to(folder).as_posix()] = target
            if len(links) > MAX_WALK:
                return None
    return links


def publish(layout: Layout, repo_id: str, commit: str, files: Mapping[str, Path]) -> Path:
    """Make ``<root>/snapshots/<owner>--<repo>/<commit>`` hold links to ``files`` (repo path
    -> entry file), plus what an earlier publish there still validly holds."""
    layout.create(SNAPSHOTS)  # refuses a root whose snapshots/ is not a real directory
    folder = repo_folder(layout.root, repo_id)
    try:
        if not _is_real_dir(folder):
            remove_any(folder)  # below a layout directory every name is ours: a squatter goes
            os.mkdir(folder)
        return _publish(folder, commit, files)
    except OSError as exc:
        raise storage_error(exc, folder, root=layout.root) from None


def _publish(folder: Path, commit: str, files: Mapping[str, Path]) -> Path:
    final = folder / commit
    have = (read_links(final) if _is_real_dir(final) else None) or {}
    wanted = {**have, **{p: Path(os.path.normpath(t)) for p, t in files.items()}}
    if have and have == wanted:
        return final  # already exactly this
    import shutil  # publishing only; cache/store.py imports this module on every hit

    tmp = temp_sibling(final)
    tmp.mkdir()
    try:
        for path, target in sorted(wanted.items()):
            where = tmp / path
            where.parent.mkdir(parents=True, exist_ok=True)
            # Relative to the final place: the same depth as the temporary one.
            where.symlink_to(os.path.relpath(target, (final / path).parent))
        _install(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    fsync_dir(folder)
    return final


def _install(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; if ``final`` exists, swap them atomically where the
    kernel can (renameat2 RENAME_EXCHANGE), else move the old one aside first."""
    if not os.path.lexists(final):
        os.rename(tmp, final)
        return
    if _exchange(tmp, final):
        return  # the old snapshot is now at tmp; the caller removes it
    import shutil

    aside = temp_sibling(final)
    os.rename(final, aside)
    try:
        os.rename(tmp, final)
    finally:
        shutil.rmtree(aside, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE)
    return int(result) == 0


def iter_snapshots(root: Path) -> Iterator[tuple[str, str, Path]]:
    """(repo id, commit, directory) of every snapshot directory of ours."""
    base = root / SNAPSHOTS
    if not _is_real_dir(base):
        return
    for repo_name in sorted(os.listdir(base)):
        folder = base / repo_name
        if not _REPO_DIR.match(repo_name) or not _is_real_dir(folder):
            continue
        owner, _, name = repo_name.partition("--")
        for commit in sorted(os.listdir(folder)):
            if _COMMIT_DIR.match(commit) and _is_real_dir(folder / commit):
                yield f"{owner}/{name}", commit, folder / commit


def list_snapshots(root: Path) -> list[SnapshotDir]:
    """Every intact snapshot (broken ones are skipped; prune removes them)."""
    out = []
    for repo_id, commit, path in iter_snapshots(root):
        links = read_links(path)
        if links is not None:
            out.append(SnapshotDir(repo_id, commit, path, links))
    return out


def remove(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)  # unlinks links, never their targets


def prune_snapshots(layout: Layout, remove_all: bool = False) -> int:
    """Remove snapshots that lost an entry (or all of them), and crashed publishers'
    leftovers. Returns how many snapshots were removed."""
    if not layout.has(SNAPSHOTS):
        return 0
    root = layout.root
    removed = 0
    for _repo_id, _commit, path in list(iter_snapshots(root)):
        if remove_all or read_links(path) is None:
            remove(path)
            removed += 1
    base = root / SNAPSHOTS
    if not _is_real_dir(base):
        return removed
    now = time.time()
    for repo_name in os.listdir(base):
        folder = base / repo_name
        if not _REPO_DIR.match(repo_name) or not _is_real_dir(folder):
            continue
        for name in os.listdir(folder):
            child = folder / name
            try:
                stale = now - os.lstat(child).st_mtime > STALE_TMP_SECONDS
            except OSError:
                continue
            if _TMP.match(name) and (stale or remove_all):
                remove(child)
        try:
            folder.rmdir()  # only if empty
        except OSError:
            pass
    return removed
