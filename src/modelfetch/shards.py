"""Split GGUF files (``name-00001-of-00003.gguf``): fetch every shard, present them together.

Each shard is an ordinary cache entry (verified, resumable, locked on its own). llama.cpp
loads a split model from the path of its first shard and looks for the others *beside it*,
so the shards are also gathered in ``<root>/sets/<name>-<key12>/`` as relative symlinks
with their original names. The set directory is built under a temporary name and renamed
into place, so nobody sees half a set. Cache code never follows these links; they only
exist for consumers of the files.
"""

from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidSourceError
from .source import ModelSource

SHARD = re.compile(r"^(?P<base>.+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.gguf$")
MAX_SHARDS = 1000
SETS = "sets"


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
    if source.kind == "hf":
        assert source.hf_path is not None
        return source.hf_path.rsplit("/", 1)[-1]
    if source.kind == "url":
        assert source.request_url is not None
        path = urllib.parse.urlsplit(source.request_url).path
        return urllib.parse.unquote(path.rsplit("/", 1)[-1])
    assert source.local_path is not None
    return source.local_path.name


def siblings(source: ModelSource) -> list[ModelSource] | None:
    """All shards of the split model ``source`` belongs to, in order; None if not split."""
    raw = _raw_name(source)
    shard = shard_name(raw)
    if shard is None or shard.count == 1:
        return None
    out = []
    for i in range(1, shard.count + 1):
        name = shard.name(i)
        if source.kind == "hf":
            assert source.hf_path is not None and source.repo_id and source.revision
            folder = source.hf_path.rsplit("/", 1)[0] + "/" if "/" in source.hf_path else ""
            out.append(ModelSource.huggingface(source.repo_id, folder + name, source.revision))
        elif source.kind == "url":
            assert source.request_url is not None
            parts = urllib.parse.urlsplit(source.request_url)
            folder = parts.path.rsplit("/", 1)[0]
            path = f"{folder}/{urllib.parse.quote(name)}"
            out.append(ModelSource.url(urllib.parse.urlunsplit(parts._replace(path=path))))
        else:
            assert source.local_path is not None
            out.append(ModelSource.path(source.local_path.with_name(name)))
    return out


def set_dir_name(shards: list[ModelSource]) -> str:
    identity = "\n".join(s.identity for s in shards)
    key = hashlib.sha256(identity.encode("utf-8")).hexdigest()
    base = shard_name(_raw_name(shards[0]))
    stem = re.sub(r"[^A-Za-z0-9._+-]+", "_", base.base if base else "set")[:64]
    return f"{stem}-{key[:12]}"


def assemble(root: Path, shards: list[ModelSource], files: list[Path]) -> Path:
    """Gather the shard files in one directory of relative symlinks; return its path."""
    sets = root / SETS
    sets.mkdir(exist_ok=True)
    final = sets / set_dir_name(shards)
    names = [_raw_name(s) for s in shards]
    if _is_complete(final, names, files):
        return final
    import shutil  # not needed when the set is already complete (every cache hit)

    tmp = sets / f".{final.name}.{os.getpid()}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name, target in zip(names, files, strict=True):
        (tmp / name).symlink_to(os.path.relpath(target, final))
    remove_set(final)  # a stale or partial set: links only, never a real file
    try:
        os.rename(tmp, final)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not _is_complete(final, names, files):  # lost a race to an identical set?
            raise
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


def remove_set(path: Path) -> None:
    if path.is_symlink():
        path.unlink()
    else:
        import shutil

        shutil.rmtree(path, ignore_errors=True)  # rmtree unlinks links, never their targets


def prune_sets(root: Path, remove_all: bool = False) -> int:
    """Remove set directories whose shards are gone (or all of them). Returns the count."""
    sets = root / SETS
    if not sets.is_dir() or sets.is_symlink():
        return 0
    removed = 0
    for child in sorted(sets.iterdir()):
        if not re.fullmatch(r"\.?[A-Za-z0-9._+-]{1,64}-[0-9a-f]{12}(\.\d+\.tmp)?", child.name):
            continue  # not ours
        dangling = not child.is_dir() or any(
            link.is_symlink() and not link.exists() for link in child.iterdir()
        )
        if remove_all or dangling or child.name.endswith(".tmp"):
            remove_set(child)
            removed += 1
    return removed
