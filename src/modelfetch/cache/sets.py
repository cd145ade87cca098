"""Split GGUF files (``name-00001-of-00003.gguf``): fetch every shard, present them together.

Each shard is an ordinary cache entry (verified, resumable, locked on its own). llama.cpp
loads a split model from the path of its first shard and looks for the others *beside it*,
so the shards are also gathered in ``<root>/sets/<name>-<key12>/`` as relative symlinks
with their original names. The set directory is built under a temporary name and renamed
into place, so nobody sees half a set. Cache code never follows these links; they only
exist for consumers of the files. The ``sets/`` directory is reached through layout.py, and
a link name is always one plain path segment, so no link is ever made outside the root.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidSourceError, storage_error
from ..fsutil import is_directory, remove_any
from ..source import HubFile, ModelSource, PathSource, UrlSource
from .layout import SETS, Layout

SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 1000
_PLAIN_NAME = re.compile(r"^[^/\\\x00-\x1f\x7f]{1,255}$")


@dataclass(frozen=True)
class ShardName:
    base: str
    index: int
    count: int

    def name(self, index: int) -> str:
        return f"{self.base}-{index:05d}-of-{self.count:05d}.gguf"


def shard_name(file_name: str) -> ShardName | None:
    match = SHARD.match(file_name)
    if not match:
        return None
    index, count = int(match.group("index")), int(match.group("count"))
    if not 1 <= index <= count:
        raise InvalidSourceError(f"shard {index} of {count} does not exist")
    if count > MAX_SHARDS:
        raise InvalidSourceError(f"a split model of {count} shards is more than we accept")
    return ShardName(match.group("base"), index, count)


def _raw_name(source: ModelSource) -> str:
    match source:
        case HubFile():
            return source.hf_path.rsplit("/", 1)[-1]
        case UrlSource():
            path = urllib.parse.urlsplit(source.request_url).path
            return urllib.parse.unquote(path.rsplit("/", 1)[-1])
        case PathSource():
            return source.local_path.name
    return source.file_name  # a tag: resolved to a file before its shards are asked for


def _sibling(source: ModelSource, name: str) -> ModelSource:
    """The file called ``name`` beside ``source``'s file."""
    match source:
        case HubFile():
            folder = source.hf_path.rsplit("/", 1)[0] + "/" if "/" in source.hf_path else ""
            return source.sibling(folder + name)
        case UrlSource():
            parts = urllib.parse.urlsplit(source.request_url)
            folder = parts.path.rsplit("/", 1)[0]
            path = f"{folder}/{urllib.parse.quote(name)}"
            return ModelSource.url(urllib.parse.urlunsplit(parts._replace(path=path)))
        case PathSource():
            return ModelSource.path(source.local_path.with_name(name))
    raise InvalidSourceError(f"{source.display} names no file to find shards beside")


def siblings(source: ModelSource) -> list[ModelSource] | None:
    """All shards of the split model ``source`` belongs to, in order; None if not split."""
    raw = _raw_name(source)
    shard = shard_name(raw)
    if shard is None or shard.count == 1:
        return None
    if not _PLAIN_NAME.match(raw) or raw.startswith("."):
        # A URL may encode '/' or control characters into the name (%2F, %1B); the shards'
        # links are named after it, so such a set cannot be gathered safely.
        raise InvalidSourceError(
            "the shard's file name (decoded from the URL) is not a plain file name; "
            "pass shards=False (--no-shards) to fetch this one file"
        )
    return [_sibling(source, shard.name(i)) for i in range(1, shard.count + 1)]


def set_dir_name(shards: list[ModelSource]) -> str:
    identity = "\n".join(s.identity for s in shards)
    key = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    base = shard_name(_raw_name(shards[0]))
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", base.base if base else "set")[:64]
    return f"{stem}-{key[:12]}"


def assemble(layout: Layout, shards: list[ModelSource], files: list[Path]) -> Path:
    """Gather the shard files in one directory of relative symlinks; return its path."""
    layout.create(SETS)
    sets = layout.path(SETS)
    final = sets / set_dir_name(shards)
    names = [_raw_name(s) for s in shards]
    if _is_complete(final, names, files):
        return final
    tmp = sets / f".{final.name}.{os.getpid()}.tmp"
    try:
        remove_any(tmp)
        os.mkdir(tmp)
        for name, target in zip(names, files, strict=True):
            (tmp / name).symlink_to(os.path.relpath(target, final))
        remove_any(final)  # a stale or partial set: links only, never a real file
    except OSError as exc:
        remove_quietly(tmp)
        raise storage_error(exc, sets, root=layout.root) from None
    try:
        os.rename(tmp, final)
    except OSError as exc:
        remove_quietly(tmp)
        if not _is_complete(final, names, files):  # lost a race to an identical set?
            raise storage_error(exc, sets, root=layout.root) from None
    return final


def _is_complete(final: Path, names: list[str], files: list[Path]) -> bool:
    try:
        for name, target in zip(names, files, strict=True):
            link = final / name
            if not link.is_symlink() or link.resolve() != target.resolve():
                return False
    except OSError:
        return False
    return True


def remove_quietly(path: Path) -> None:
    try:
        remove_any(path)  # rmtree unlinks links, never their targets
    except OSError:
        pass


def prune_sets(layout: Layout, remove_all: bool = False) -> int:
    """Remove set directories whose shards are gone (or all of them). Returns the count."""
    if not layout.has(SETS):
        return 0
    sets = layout.path(SETS)
    removed = 0
    for child in sorted(sets.iterdir()):
        if not re.fullmatch(r"\.?[A-Za-z0-9._+-]{1,64}-[0-9a-f]{12}(\.\d+\.tmp)?", child.name):
            continue  # not ours
        try:
            dangling = not is_directory(child) or any(
                link.is_symlink() and not link.exists() for link in child.iterdir()
            )
        except OSError:
            dangling = True
        if remove_all or dangling or child.name.endswith(".tmp"):
            remove_quietly(child)
            removed += 1
    return removed
