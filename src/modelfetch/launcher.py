"""The ``modelfetch`` command's entry point: answers a cache hit of ``get`` before loading
click and the download machinery.

Scripts run ``modelfetch get SOURCE`` at every service start and in loops, and nearly all
of those calls are hits. Importing click, urllib3, filelock and tqdm costs several times
more than the lookup itself, so the plain forms of ``get`` are recognised here and asked of
``ensure.quick_hit`` (the same lookup as ``ensure``: no lock, no hashing, no request). The
output is what the full command prints. Anything else (another command or option, a miss,
invalid input, any trouble at all) goes to the click command line in ``cli.py``, which
does the work and the error reporting.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

from .cache import CacheEntry
from .progress import ProgressEvent

# The flags of `get` that matter for a hit, and the _GetArgs field each one sets.
_FLAGS: dict[str, tuple[str, object]] = {
    "-q": ("quiet", True),
    "--quiet": ("quiet", True),
    "--json": ("as_json", True),
    "--cache-only": ("policy", "cache_only"),
    "--no-shards": ("shards", False),
}


@dataclass
class _GetArgs:
    source: str
    cache_dir: str | None = None
    sha256: str | None = None
    policy: str | None = None
    shards: bool = True
    quiet: bool = False
    as_json: bool = False


def entry_line(entry: CacheEntry, as_json: bool) -> str:
    """What ``modelfetch get`` prints on stdout for an entry (shared with cli.py)."""
    if as_json:
        return json.dumps(entry.to_dict(), indent=2, sort_keys=True)
    return str(entry.set_path or entry.path)


def hit_line(event: ProgressEvent) -> str:
    """What ``modelfetch get`` prints on stderr for a cache_hit event (shared with cli.py)."""
    return f"cache hit: {event.source}"


def _value(args: list[str], i: int, name: str) -> tuple[str, int] | None:
    """The value of option ``name`` at args[i] ('--name value' or '--name=value')."""
    arg = args[i]
    if arg.startswith(name + "="):
        return arg[len(name) + 1 :], i + 1
    if arg == name and i + 1 < len(args):
        return args[i + 1], i + 2
    return None


def parse_plain_get(args: list[str]) -> _GetArgs | None:
    """``[--cache-dir D] get SOURCE`` with only the options that matter for a hit; else None."""
    i, cache_dir = 0, None
    if args and args[0].startswith("--cache-dir"):
        found = _value(args, 0, "--cache-dir")
        if found is None:
            return None
        cache_dir, i = found
        if not cache_dir:
            return None
    if args[i : i + 1] != ["get"]:
        return None
    i += 1
    parsed = _GetArgs(source="", cache_dir=cache_dir)
    while i < len(args):
        arg = args[i]
        if arg in _FLAGS:
            setattr(parsed, *_FLAGS[arg])
            i += 1
        elif arg.startswith("--sha256") and (found := _value(args, i, "--sha256")):
            parsed.sha256, i = found
        elif arg.startswith("-") or parsed.source:
            return None  # another option, '--', or a second operand: click decides
        else:
            parsed.source = arg
            i += 1
    return parsed if parsed.source else None


def _hit_output(args: _GetArgs) -> tuple[list[str], str] | None:
    """(stderr lines, stdout text) of ``modelfetch get`` for a verified hit; None if not one."""
    from .ensure import quick_hit
    from .options import CachePolicy, EnsureOptions

    notes: list[str] = []

    def on_event(event: ProgressEvent) -> None:
        if event.kind == "cache_hit" and not args.quiet:
            notes.append(hit_line(event))

    options = EnsureOptions(
        cache_dir=args.cache_dir,
        policy=CachePolicy(args.policy or "prefer_cached"),
        sha256=args.sha256,
        shards=args.shards,
        progress=on_event,
    )
    entry = quick_hit(args.source, options)
    return None if entry is None else (notes, entry_line(entry, args.as_json))


def plain_hit(argv: list[str]) -> tuple[list[str], str] | None:
    """The output for ``argv`` if it is a plain ``get`` of a verified hit, else None.

    Any exception also means None: the full command then repeats the work and reports the
    problem properly (one line, the right exit status), so nothing is lost by not knowing.
    """
    try:
        parsed = parse_plain_get(argv)
        return None if parsed is None else _hit_output(parsed)
    except Exception:
        return None


def main() -> None:
    """Entry point of the ``modelfetch`` command and of ``python -m modelfetch``."""
    try:
        answer = plain_hit(sys.argv[1:])
    except KeyboardInterrupt:
        sys.exit(130)
    if answer is None:
        from .cli import main as cli_main

        cli_main(prog_name="modelfetch")
        return
    notes, out = answer
    for note in notes:
        sys.stderr.write(note + "\n")
    sys.stderr.flush()
    sys.stdout.write(out + "\n")
    sys.stdout.flush()
