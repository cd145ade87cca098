"""The Hugging Face hub cache: found as huggingface_hub finds it, published into, adopted from.

Layout (hub-docs ``local-cache.md``; huggingface_hub ``file_download.py``,
``_tree_cache.py``, ``utils/_cache_manager.py``)::

    <hub cache>/models--OWNER--REPO/
        blobs/<sha256 | git sha1>       the content, named by its ETag: the SHA-256 of an LFS
                                        file, the git blob id of a git-stored one
        snapshots/<commit>/<repo path>  relative symlinks to ../../blobs/<name> (one more
                                        ../ per folder level of the repo path)
        refs/<revision>                 the 40-hex commit, with no trailing newline
                                        (huggingface_hub reads it unstripped)
        trees/<commit>.json             the commit's file listing, format_version 1; offline
                                        snapshot_download uses it to detect a partial snapshot

Publishing is ordered so that no crash leaves anything a reader could take for complete:
the tree listing first (a partial snapshot is then detectably partial; single ``hf://``
files publish none, as ``hf_hub_download`` writes none), then the blobs
(hard links to modelfetch's entry files, so no second copy on disk; copies across
filesystems), then the snapshot links (a new snapshot directory is built under
``.modelfetch-tmp/`` and renamed into place; links added to an existing one are each made
under a temporary name and renamed), and the ref last. Every file is written to a
temporary name and renamed.

Adoption goes the other way: a blob is used only after its content hashed to its name
(SHA-256, or git blob SHA-1). The hub cache belongs to other programs, so everything in it
is hostile input: symlinks are followed only to files inside it, and nothing is written
through a symlinked directory.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .errors import CorruptCacheError
from .fsutil import (
    atomic_write_bytes,
    content_digests,
    fsync_dir,
    hardlink_or_copy,
    is_inside,
    read_regular_file,
    temp_sibling,
    unlink_quiet,
)
from .hubtree import COMMIT, RepoFile, read_tree_file, write_tree_file
from .options import env_hf_cache_setting, env_hf_home, env_hub_cache

_BLOB_NAME = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64})$")
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
TMP_DIR = ".modelfetch-tmp"
STALE_TMP_SECONDS = 3600.0


def default_hub_cache() -> Path:
    """The hub cache huggingface_hub uses: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE (its
    legacy name), else HF_HOME/hub, HF_HOME defaulting to $XDG_CACHE_HOME/huggingface or
    ~/.cache/huggingface (huggingface_hub's constants.py)."""
    explicit = env_hub_cache()
    if explicit:
        return Path(os.path.expandvars(os.path.expanduser(explicit)))
    home = env_hf_home()
    return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"


@dataclass(frozen=True)
class HubCacheSetting:
    root: Path | None  # the hub cache to adopt from (and publish into); None: leave it alone
    publish: bool


def hub_cache_setting(value: bool | str | os.PathLike[str] | None) -> HubCacheSetting:
    """What ``hf_cache`` (or, when it is None, ``MODELFETCH_HF_CACHE``) asks for.

    Unset: files already in the default hub cache are adopted, nothing is published.
    False / "0": the hub cache is not touched. True / "1": publish into the default hub
    cache. A path: publish into (and adopt from) that directory.
    """
    if value is None:
        env = env_hf_cache_setting()
        if env is None:
            return HubCacheSetting(default_hub_cache(), publish=False)
        value = env
    if isinstance(value, bool):
        return HubCacheSetting(default_hub_cache() if value else None, publish=value)
    text = os.fspath(value)
    if isinstance(value, str) and text.lower() in _TRUE:
        return HubCacheSetting(default_hub_cache(), publish=True)
    if isinstance(value, str) and text.lower() in _FALSE:
        return HubCacheSetting(None, publish=False)
    return HubCacheSetting(Path(os.path.expanduser(text)), publish=True)


@dataclass(frozen=True)
class Adopted:
    """A hub-cache blob now also at the part path: verified, linked or copied."""

    sha256: str
    size: int
    linked: bool


def _real_dir(path: Path, create: bool) -> bool:
    if create:
        try:
            path.mkdir(exist_ok=True)
        except FileExistsError:
            pass
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


class HubCacheRepo:
    """One model repository in a hub cache."""

    def __init__(self, root: Path, repo_id: str) -> None:
        self.root = root
        self.repo_id = repo_id
        self.folder = root / ("models--" + repo_id.replace("/", "--"))

    # -- paths ------------------------------------------------------------------------------
    def blob(self, name: str) -> Path:
        return self.folder / "blobs" / name

    def snapshot(self, commit: str) -> Path:
        return self.folder / "snapshots" / commit

    def ref(self, revision: str) -> Path:
        return self.folder / "refs" / revision

    def tree(self, commit: str) -> Path:
        return self.folder / "trees" / f"{commit}.json"

    # -- reading (hostile input) -----------------------------------------------------------
    def read_ref(self, revision: str) -> str | None:
        """The commit ``refs/<revision>`` names, read as huggingface_hub does (unstripped)."""
        if COMMIT.match(revision):
            return revision
        try:
            text = read_regular_file(self.ref(revision), 256).decode("ascii")
        except (OSError, UnicodeDecodeError):
            return None
        return text if COMMIT.match(text) else None

    def read_tree(self, commit: str) -> list[RepoFile] | None:
        return read_tree_file(self.tree(commit))

    def pointer_blob(self, commit: str, path: str) -> str | None:
        """The blob name ``snapshots/<commit>/<path>`` links to, if it is a well-formed
        link into this repo's ``blobs/``."""
        link = self.snapshot(commit) / path
        try:
            target = os.readlink(link)
        except OSError:
            return None
        name = os.path.basename(target)
        lexical = os.path.normpath(os.path.join(link.parent, target))
        if not _BLOB_NAME.match(name) or lexical != os.path.normpath(self.blob(name)):
            return None
        return name

    def _open_blob(self, name: str) -> int | None:
        """A read descriptor on blob ``name``: a regular file, or a symlink to one inside the
        hub cache (huggingface_hub's shared store for Xet files)."""
        if not _BLOB_NAME.match(name) or not _real_dir(self.folder / "blobs", create=False):
            return None
        blob = self.blob(name)
        try:
            st = os.lstat(blob)
        except OSError:
            return None
        target = blob
        if stat.S_ISLNK(st.st_mode):
            target = Path(os.path.realpath(blob))
            if not is_inside(target, Path(os.path.realpath(self.root))):
                return None
        try:
            fd = os.open(target, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError:
            return None
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        return fd

    def adopt(self, name: str, size: int | None, part: Path) -> Adopted | None:
        """Put blob ``name`` at ``part`` if its content hashes to its name (and has ``size``).

        A hard link when ``part`` is on the same filesystem (its inode must be the one that
        was hashed), otherwise a copy that is hashed again. None: not there, or not right.
        """
        fd = self._open_blob(name)
        if fd is None:
            return None
        try:
            st = os.fstat(fd)
            if size is not None and st.st_size != size:
                return None
            sha256, sha1, got = content_digests(fd, st.st_size)
        finally:
            os.close(fd)
        if got != st.st_size or name not in (sha256, sha1):
            return None
        source = Path(os.path.realpath(self.blob(name)))
        unlink_quiet(part)
        linked = hardlink_or_copy(source, part)
        if not self._same_content(part, st, sha256, name, linked):
            unlink_quiet(part)
            return None
        return Adopted(sha256, st.st_size, linked)

    @staticmethod
    def _same_content(
        part: Path, hashed: os.stat_result, sha256: str, name: str, linked: bool
    ) -> bool:
        """The file now at ``part`` is the one that was hashed (the blob could have been
        replaced between hashing and linking)."""
        try:
            st = os.lstat(part)
        except OSError:
            return False
        if linked:
            return (st.st_ino, st.st_dev, st.st_size, st.st_mtime_ns) == (
                hashed.st_ino,
                hashed.st_dev,
                hashed.st_size,
                hashed.st_mtime_ns,
            )
        fd = os.open(part, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        try:
            digest, sha1, got = content_digests(fd, st.st_size)
        finally:
            os.close(fd)
        return got == hashed.st_size and name in (digest, sha1) and digest == sha256

    def holds(
        self, commit: str, revision: str, path: str, name: str, local: Path, *, move_ref: bool
    ) -> bool:
        """Whether ``publish_named`` has nothing to do for this one file: the snapshot link
        names blob ``name``, which is ``local``'s inode, and ``refs/<revision>`` names
        ``commit`` (or, without ``move_ref``, exists). Read-only and cheap (no hashing)."""
        if self.pointer_blob(commit, path) != name:
            return False
        ref = self.read_ref(revision)
        if ref is None or (move_ref and ref != commit):
            return False
        try:
            blob, mine = os.lstat(self.blob(name)), os.lstat(local)
        except OSError:
            return False
        return (blob.st_ino, blob.st_dev) == (mine.st_ino, mine.st_dev)

    # -- publishing ----------------------------------------------------------------------------
    def publish(
        self,
        commit: str,
        revision: str,
        tree: Sequence[RepoFile] | None,
        files: Iterable[tuple[RepoFile, Path]],
    ) -> Path:
        """Make ``snapshots/<commit>`` hold ``files`` (each a repo file and the verified
        local file with its content); write ``trees/<commit>.json`` from ``tree`` and point
        ``refs/<revision>`` at ``commit``. Returns the snapshot directory."""
        named = [(f.path, f.hf_blob_name, local) for f, local in files]
        return self.publish_named(commit, revision, tree, named)

    def publish_named(
        self,
        commit: str,
        revision: str,
        tree: Sequence[RepoFile] | None,
        files: Iterable[tuple[str, str, Path]],
        *,
        move_ref: bool = True,
    ) -> Path:
        """``publish`` for files given as (repo path, blob name, verified local file).

        ``tree`` None writes no tree listing (a listing claims what the commit holds, so
        only a complete one may be written). ``move_ref`` False only creates a missing
        ``refs/<revision>``: a commit remembered from an earlier download must not move
        back a ref someone has since pointed at a newer commit."""
        try:
            return self._publish(commit, revision, tree, list(files), move_ref)
        except OSError as exc:
            raise CorruptCacheError(
                f"could not publish {self.repo_id} into the Hugging Face cache at "
                f"{self.root}: {exc.strerror or exc}"
            ) from None

    def _publish(
        self,
        commit: str,
        revision: str,
        tree: Sequence[RepoFile] | None,
        files: list[tuple[str, str, Path]],
        move_ref: bool,
    ) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        for sub in (self.folder, *(self.folder / d for d in ("blobs", "snapshots", "refs"))):
            self._require_dir(sub)
        if tree is not None:
            self._require_dir(self.folder / "trees")
            write_tree_file(self.tree(commit), tree)
        for _, name, local in files:
            self._place_blob(name, local)
        fsync_dir(self.folder / "blobs")
        links = [(path, name) for path, name, _ in files]
        snap = self.snapshot(commit)
        if os.path.lexists(snap) or not self._new_snapshot(commit, links):
            self._add_links(snap, links)
        if revision != commit and (move_ref or self.read_ref(revision) is None):
            self._write_ref(revision, commit)
        return snap

    def _require_dir(self, path: Path) -> None:
        if not _real_dir(path, create=True):
            raise CorruptCacheError(
                f"{path} is not a plain directory (a symlink or a file?); modelfetch will "
                "not write through it"
            )

    def _place_blob(self, name: str, local: Path) -> None:
        """``blobs/<name>`` becomes (a link to) ``local``, whose content is verified."""
        blob = self.blob(name)
        src = os.lstat(local)
        same_fs = os.lstat(blob.parent).st_dev == src.st_dev
        try:
            have = os.lstat(blob)
        except FileNotFoundError:
            have = None
        if have is not None and (have.st_ino, have.st_dev) == (src.st_ino, src.st_dev):
            return
        if have is not None and not same_fs and self._blob_is_good(name, src.st_size):
            return  # keep a good copy rather than copying the same bytes again
        tmp = temp_sibling(blob)
        try:
            hardlink_or_copy(local, tmp)
            if os.lstat(tmp).st_size != src.st_size:
                raise OSError(f"copy of {local} came out short")
            os.replace(tmp, blob)
        finally:
            unlink_quiet(tmp)

    def _blob_is_good(self, name: str, size: int) -> bool:
        fd = self._open_blob(name)
        if fd is None:
            return False
        try:
            if os.fstat(fd).st_size != size:
                return False
            sha256, sha1, got = content_digests(fd, size)
        finally:
            os.close(fd)
        return got == size and name in (sha256, sha1)

    def _link_target(self, snap: Path, path: str, name: str) -> str:
        return os.path.relpath(self.blob(name), (snap / path).parent)

    def _new_snapshot(self, commit: str, links: list[tuple[str, str]]) -> bool:
        """Build the snapshot directory aside and rename it into place. False if another
        writer created it meanwhile (then links are added to theirs)."""
        tmp_root = self.folder / TMP_DIR
        self._require_dir(tmp_root)
        self._sweep_stale(tmp_root)
        final = self.snapshot(commit)
        # Same depth below the repo folder as snapshots/<commit>: relative links stay right.
        import shutil  # publishing only; not on the way to a cache hit

        tmp = temp_sibling(tmp_root / commit)
        tmp.mkdir()
        try:
            for path, name in links:
                where = tmp / path
                where.parent.mkdir(parents=True, exist_ok=True)
                where.symlink_to(self._link_target(final, path, name))
            try:
                os.rename(tmp, final)
            except OSError:
                if not os.path.lexists(final):
                    raise
                return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        fsync_dir(final.parent)
        try:
            tmp_root.rmdir()
        except OSError:
            pass  # another publisher is using it
        return True

    @staticmethod
    def _sweep_stale(tmp_root: Path) -> None:
        """Remove what a crashed publisher left behind (links only, never blobs)."""
        import shutil

        now = time.time()
        for child in tmp_root.iterdir():
            try:
                old = now - os.lstat(child).st_mtime > STALE_TMP_SECONDS
            except OSError:
                continue
            if old:
                shutil.rmtree(child, ignore_errors=True)

    def _add_links(self, snap: Path, links: list[tuple[str, str]]) -> None:
        self._require_dir(snap)
        for path, name in links:
            where = snap / path
            parent = snap
            for segment in path.split("/")[:-1]:
                parent = parent / segment
                self._require_dir(parent)
            target = self._link_target(snap, path, name)
            try:
                if os.readlink(where) == target:
                    continue
            except OSError:
                pass
            if os.path.isdir(where) and not os.path.islink(where):
                raise CorruptCacheError(f"{where} is a directory where a file belongs")
            tmp = temp_sibling(where)
            try:
                tmp.symlink_to(target)
                os.replace(tmp, where)
            finally:
                unlink_quiet(tmp)
        fsync_dir(snap)

    def _write_ref(self, revision: str, commit: str) -> None:
        ref = self.ref(revision)
        parent = self.folder / "refs"
        for segment in revision.split("/")[:-1]:
            parent = parent / segment
            self._require_dir(parent)
        if self.read_ref(revision) != commit:
            atomic_write_bytes(ref, commit.encode("ascii"))
