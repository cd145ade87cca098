"""The ``modelfetch`` command line: get, ls, info, rm, prune, clear, verify, serve.

The installed command starts in launcher.py, which answers a plain ``get`` of a verified
hit itself and hands everything else to ``main`` here.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from ._version import __version__
from .cache import Cache, CacheEntry
from .cancel import CancelToken
from .ensure import ensure
from .errors import ModelFetchError
from .launcher import entry_line, hit_line
from .options import CachePolicy, EnsureOptions
from .progress import ProgressEvent
from .redact import printable
from .snapshot import (
    Snapshot,
    SnapshotInfo,
    find_snapshot,
    list_snapshots,
    remove_snapshot,
    snapshot,
    verify_snapshot_files,
    verify_snapshots,
)

_SIZE = re.compile(r"^\s*(\d{1,15}(?:\.\d{1,6})?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d{1,9}(?:\.\d{1,6})?)\s*([smhdw]?)\s*$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3, "t": 1024**4, "p": 1024**5}
_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_STOP_GRACE = 10.0  # after Ctrl-C, how long the download may take to save its part
T = TypeVar("T")


def parse_size(text: str) -> int:
    """'500M', '10G', '1.5GiB', '1024' -> bytes (binary units)."""
    match = _SIZE.match(text)
    if not match:
        raise click.BadParameter(f"{text[:40]!r} is not a size like 500M, 10G or 1048576")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def parse_duration(text: str) -> float:
    """'30d', '12h', '90m', '3600' -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise click.BadParameter(f"{text[:40]!r} is not a duration like 30d, 12h or 3600")
    return float(match.group(1)) * _SECONDS[match.group(2).lower()]


def run_interruptibly(work: Callable[[], T], cancel: CancelToken) -> T:
    """Run ``work`` in a worker thread so that Ctrl-C reaches us at once, wherever the
    download is blocked, and fires ``cancel`` right away: the download stops within a
    moment, keeping its part for a resume. A second Ctrl-C stops waiting for it."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as exc:
            failure.append(exc)

    worker = threading.Thread(target=target, name="modelfetch-get", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.2)
    except KeyboardInterrupt:
        cancel.cancel()
        deadline = time.monotonic() + _STOP_GRACE
        try:
            while worker.is_alive() and time.monotonic() < deadline:
                worker.join(0.1)
        except KeyboardInterrupt:
            pass
        raise
    if failure:
        raise failure[0]
    return outcome[0]


def _size_option(ctx: click.Context, param: click.Parameter, value: str) -> int:
    return parse_size(value)


def _seconds_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise click.BadParameter("must be more than 0 seconds")
    return seconds


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


_DEFAULT_HF_CACHE = "\0default"  # --hf-cache given without a PATH


class _SnapshotPrinter:
    """One aggregate bar for a whole repository: bytes, files done/total, rate."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if event.kind == "start" and self.bar is None:
            from tqdm import tqdm

            self.bar = tqdm(
                total=event.bytes_total,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        if self.bar is not None and event.files_total is not None:
            self.bar.set_description(f"{event.files_done}/{event.files_total} files", False)
            self.bar.update(event.bytes_done - self.bar.n)
        if event.kind in ("retry", "restart", "waiting", "warning", "tier_hit"):
            text = f"{event.kind}: {event.message}"
            if self.bar is not None:
                self.bar.write(text, file=sys.stderr)
            else:
                click.echo(text, err=True)
        elif event.kind == "done":
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class _ProgressPrinter:
    """Turns ProgressEvents into a tqdm bar and short status lines on stderr."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar: Any = None

    def __call__(self, event: ProgressEvent) -> None:
        if self.quiet:
            return
        if event.kind == "start":
            from tqdm import tqdm  # only a download draws a bar; a hit should not pay for it

            self.close()
            self.bar = tqdm(
                total=event.bytes_total,
                initial=event.bytes_done,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc="resuming" if event.bytes_done else "downloading",
                file=sys.stderr,
                dynamic_ncols=True,
            )
        elif event.kind == "progress" and self.bar is not None:
            self.bar.update(event.bytes_done - self.bar.n)
        elif event.kind in ("retry", "restart", "waiting", "not_modified", "warning"):
            self._say(f"{event.kind}: {event.message or event.source}")
        elif event.kind == "cache_hit":
            self._say(hit_line(event))
        elif event.kind == "tier_hit":
            self._say(f"from the shared tier: {event.source}")
        elif event.kind in ("tier_lead", "tier_follow", "tier_takeover"):
            self._say(f"fleet: {event.message}")
        elif event.kind == "done":
            self.close()

    def _say(self, text: str) -> None:
        text = printable(text)  # event messages can carry what a server said
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            click.echo(text, err=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _cache(ctx: click.Context) -> Cache:
    return Cache(ctx.obj.get("cache_dir"))


def _emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def _say(text: str) -> None:
    """Print a line that may hold text from disk or a server (escaped, never raw)."""
    click.echo(printable(text))


def _entries_table(entries: list[CacheEntry]) -> None:
    if not entries:
        click.echo("(cache is empty)")
        return
    click.echo(f"{'KEY':12}  {'SIZE':>10}  {'LAST USED':19}  SOURCE")
    for e in entries:
        used = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.last_used))
        flag = " [transient]" if e.transient else ""
        _say(f"{e.cache_key[:12]}  {human_bytes(e.size):>10}  {used}  {e.source}{flag}")


class _Group(click.Group):
    """Turns our errors into one escaped line and exit status 1 (never a traceback)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except ModelFetchError as exc:
            raise click.ClickException(printable(str(exc))) from None
        except OSError as exc:  # a filesystem failure no layer above expected
            where = f": {exc.filename}" if exc.filename else ""
            reason = exc.strerror or type(exc).__name__
            raise click.ClickException(printable(f"{reason}{where}")) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--cache-dir",
    envvar="MODELFETCH_CACHE_DIR",
    type=click.Path(),
    help="Cache root (default: MODELFETCH_CACHE_DIR or the platform cache dir).",
)
@click.version_option(__version__, prog_name="modelfetch")
@click.pass_context
def main(ctx: click.Context, cache_dir: str | None) -> None:
    """Fetch model files fast, verified and crash-safe, into a cache you can trust."""
    ctx.obj = {"cache_dir": cache_dir}


@main.command()
@click.argument("source")
@click.option("--sha256", help="Expected SHA-256; the download fails if it differs.")
@click.option("--refresh", "policy", flag_value="refresh", help="Revalidate with the origin.")
@click.option("--cache-only", "policy", flag_value="cache_only", help="Never use the network.")
@click.option("--no-cache", "policy", flag_value="no_cache", help="Always download (transient).")
@click.option(
    "--token",
    envvar="MODELFETCH_TOKEN",
    help="Bearer token, sent only to the source's origin (env MODELFETCH_TOKEN; for hf:// "
    "sources HF_TOKEN is used when unset).",
)
@click.option("-H", "--header", "headers", multiple=True, help="Extra header 'Name: value'.")
@click.option("--no-resume", is_flag=True, help="Discard any partial download.")
@click.option("--retries", default=3, show_default=True, type=click.IntRange(0, 100))
@click.option(
    "-x",
    "--connections",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Parallel connections for large files on servers that support ranges.",
)
@click.option(
    "--remote", envvar="MODELFETCH_REMOTE", help="Shared tier s3://bucket/prefix (optional)."
)
@click.option(
    "--remote-endpoint",
    envvar="MODELFETCH_S3_ENDPOINT",
    help="Endpoint URL of an S3-compatible store for --remote.",
)
@click.option("--no-shards", is_flag=True, help="Fetch only the named shard of a split GGUF.")
@click.option(
    "--low-speed-limit",
    callback=_size_option,
    metavar="BYTES",
    default="1K",
    show_default=True,
    help="Bytes per second (e.g. 1K, 512) below which, sustained for --low-speed-time, a "
    "transfer is aborted and retried; 0 turns this off (curl's --speed-limit).",
)
@click.option(
    "--low-speed-time",
    callback=_seconds_option,
    metavar="SECONDS",
    default="30",
    show_default=True,
    help="Seconds (or 2m) the transfer may stay below --low-speed-limit (curl's --speed-time).",
)
@click.option(
    "--all", "all_files", is_flag=True, help="Fetch every file of the repository hf://OWNER/REPO."
)
@click.option(
    "--include",
    multiple=True,
    metavar="GLOB",
    help="Fetch the repository's files matching GLOB (repeatable; fnmatch on repo paths).",
)
@click.option(
    "--exclude", multiple=True, metavar="GLOB", help="Leave out files matching GLOB (repeatable)."
)
@click.option(
    "--hf-cache",
    "hf_cache",
    is_flag=False,
    flag_value=_DEFAULT_HF_CACHE,
    default=None,
    metavar="[=PATH]",
    help="Also publish the hf:// file(s) or repository into the Hugging Face cache: where "
    "huggingface_hub looks (HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub), or PATH. "
    "Env MODELFETCH_HF_CACHE.",
)
@click.option(
    "-j",
    "--parallel-files",
    default=8,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Files of a repository fetched at once.",
)
@click.option(
    "--max-connections",
    default=32,
    show_default=True,
    type=click.IntRange(1, 512),
    help="Connections a repository's files may hold together.",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the entry (or snapshot) as JSON; an entry's 'via' says how it came: cache, "
    "hf_cache, revalidated, origin, tier, peer or takeover.",
)
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@click.pass_context
def get(
    ctx: click.Context,
    source: str,
    sha256: str | None,
    policy: str | None,
    token: str | None,
    headers: tuple[str, ...],
    no_resume: bool,
    retries: int,
    connections: int,
    remote: str | None,
    remote_endpoint: str | None,
    no_shards: bool,
    low_speed_limit: int,
    low_speed_time: float,
    all_files: bool,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    hf_cache: str | None,
    parallel_files: int,
    max_connections: int,
    as_json: bool,
    quiet: bool,
) -> None:
    """Ensure SOURCE is cached and verified; print its path.

    SOURCE: a path, an http(s) URL, hf://owner/repo[@rev]/path/file, or
    hf://owner/repo[@rev][:QUANT] (a GGUF picked by tag, Q4_K_M by default). For a split
    GGUF the printed path is the first shard in a folder holding all of them.

    With --all, --include or --exclude, SOURCE is a whole repository hf://owner/repo[@rev]:
    its files are fetched at one commit, each verified, and the last line printed is the
    snapshot directory (repo paths below it).
    """
    header_map: dict[str, str] = {}
    for item in headers:
        name, sep, value = item.partition(":")
        if not sep:
            raise click.BadParameter("use 'Name: value'", param_hint="--header")
        header_map[name.strip()] = value.strip()
    whole_repo = all_files or bool(include) or bool(exclude)
    if whole_repo and max_connections < parallel_files:
        raise click.BadParameter(
            "must be at least --parallel-files", param_hint="--max-connections"
        )
    printer: Any = _SnapshotPrinter(quiet) if whole_repo else _ProgressPrinter(quiet)
    cancel = CancelToken()
    try:
        options = EnsureOptions(
            cache_dir=ctx.obj.get("cache_dir"),
            policy=CachePolicy(policy or "prefer_cached"),
            sha256=sha256,
            bearer_token=token or None,
            headers=header_map or None,
            resume=not no_resume,
            max_retries=retries,
            connections=connections,
            remote=remote or None,
            remote_endpoint=remote_endpoint or None,
            shards=not no_shards,
            low_speed_limit=low_speed_limit,
            low_speed_time=low_speed_time,
            cancel=cancel,
            progress=printer,
            hf_cache=(True if hf_cache == _DEFAULT_HF_CACHE else hf_cache),
            parallel_files=parallel_files,
            max_connections=max(max_connections, parallel_files),
        )
        if whole_repo:
            result = run_interruptibly(
                lambda: snapshot(source, include or None, exclude, options=options), cancel
            )
        else:
            entry = run_interruptibly(lambda: ensure(source, options), cancel)
    except KeyboardInterrupt:
        printer.close()
        click.echo("interrupted; run the same command again to resume", err=True)
        sys.exit(130)
    finally:
        printer.close()
    if whole_repo:
        _report_snapshot(result, as_json, quiet)
    else:
        click.echo(entry_line(entry, as_json))


def _report_snapshot(result: Snapshot, as_json: bool, quiet: bool) -> None:
    if as_json:
        _emit_json(result.to_dict())
        return
    counts = result.to_dict()["counts"]
    if not quiet:
        done = ", ".join(f"{n} {how}" for how, n in counts.items() if n)
        click.echo(
            f"{result.repo_id} at {result.commit[:12]}: {len(result.files)} files, "
            f"{human_bytes(result.size)} ({done}), every file verified",
            err=True,
        )
        if result.hf_cache_path is not None:
            click.echo(f"also in the Hugging Face cache: {result.hf_cache_path}", err=True)
    click.echo(str(result.path))


@main.command("ls")
@click.option("--json", "as_json", is_flag=True)
@click.option("--snapshots", is_flag=True, help="List whole-repository snapshots only.")
@click.pass_context
def ls_cmd(ctx: click.Context, as_json: bool, snapshots: bool) -> None:
    """List cache entries (corrupt ones are skipped, and counted on stderr), then snapshots
    of whole repositories."""
    cache = _cache(ctx)
    snaps = list_snapshots(cache)
    if snapshots:
        if as_json:
            _emit_json([s.to_dict() for s in snaps])
        else:
            _snapshots_table(snaps)
        return
    entries, corrupt = cache.scan()
    if as_json:
        _emit_json([e.to_dict() for e in entries])
    else:
        _entries_table(entries)
        if snaps:
            click.echo()
            _snapshots_table(snaps)
    if corrupt:
        click.echo(
            f"note: {len(corrupt)} corrupt entr{'y' if len(corrupt) == 1 else 'ies'} not "
            "listed; `modelfetch verify` reports and removes them",
            err=True,
        )


def _snapshots_table(snaps: list[SnapshotInfo]) -> None:
    if not snaps:
        click.echo("(no snapshots)")
        return
    click.echo(f"{'SNAPSHOT':40}  {'FILES':>5}  {'SIZE':>10}  PATH")
    for s in snaps:
        name = f"{s.repo_id}@{s.commit[:12]}"
        if s.revisions:
            name += f" ({', '.join(s.revisions)})"
        _say(f"{name:40}  {s.files:>5}  {human_bytes(s.size):>10}  {s.path}")


@main.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def info(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show entries matching REF (a source, a cache-key prefix or an entry dir name)."""
    entries = _cache(ctx).find(ref)
    if not entries:
        raise ModelFetchError(f"no cache entry matches {ref[:200]!r}")
    if as_json:
        _emit_json([e.to_dict() for e in entries])
        return
    for e in entries:
        for key, value in e.to_dict().items():
            _say(f"{key:14} {value}")
        click.echo()


@main.command()
@click.argument("refs", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rm(ctx: click.Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Remove the entries matching each REF (or a snapshot directory and its files).

    A snapshot that loses one of its files is removed as a whole.
    """
    cache = _cache(ctx)
    removed = []
    for ref in refs:
        snap = find_snapshot(cache, ref)
        removed += remove_snapshot(cache, snap) if snap is not None else cache.remove(ref)
    if as_json:
        _emit_json({"removed": [e.to_dict() for e in removed]})
    else:
        for e in removed:
            _say(f"removed {e.cache_key[:12]} {e.source}")
    if not removed:
        raise ModelFetchError("nothing matched (or the entry is being downloaded right now)")


@main.command()
@click.option("--max-age", help="Remove entries unused for longer than this (e.g. 30d, 12h).")
@click.option("--max-bytes", help="Then remove least recently used entries down to this size.")
@click.option("--dry-run", is_flag=True, help="Only report what would be removed.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def prune(
    ctx: click.Context, max_age: str | None, max_bytes: str | None, dry_run: bool, as_json: bool
) -> None:
    """Remove stale partial downloads, old entries, and LRU entries over a size budget."""
    report = _cache(ctx).prune(
        parse_duration(max_age) if max_age else None,
        parse_size(max_bytes) if max_bytes else None,
        dry_run=dry_run,
    )
    if as_json:
        _emit_json(
            {
                "removed": [e.to_dict() for e in report.removed],
                "freed_bytes": report.freed_bytes,
                "parts_removed": report.parts_removed,
                "busy_skipped": report.busy_skipped,
                "dry_run": dry_run,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for e in report.removed:
        _say(f"{verb} {e.cache_key[:12]} {human_bytes(e.size)} {e.source}")
    click.echo(
        f"{verb} {len(report.removed)} entries ({human_bytes(report.freed_bytes)}), "
        f"{report.parts_removed} stale partial downloads; {report.busy_skipped} busy skipped"
    )


@main.command()
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clear(ctx: click.Context, yes: bool, as_json: bool) -> None:
    """Remove every entry (files in the cache root that are not ours are left alone)."""
    cache = _cache(ctx)
    if not yes:
        click.confirm(f"Remove every modelfetch entry under {cache.root}?", abort=True)
    removed, busy = cache.clear()
    if as_json:
        _emit_json({"removed": removed, "busy": busy})
    else:
        click.echo(f"removed {removed} entries; {busy} busy (being downloaded) left in place")


@main.command()
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def verify(ctx: click.Context, ref: str | None, as_json: bool) -> None:
    """Re-hash entries fully; corrupt files are removed. Exit 1 if any entry was bad.

    Without REF, snapshots are then checked end to end against their commit's file list;
    REF may also be a snapshot directory (its files, then the snapshot).
    """
    cache = _cache(ctx)
    snap = find_snapshot(cache, ref) if ref is not None else None
    if snap is not None:
        results = verify_snapshot_files(cache, snap)
    else:
        results = cache.verify(ref)
    if ref is None:
        results += verify_snapshots(cache)
    if as_json:
        _emit_json(
            [{"directory": str(r.directory), "ok": r.ok, "detail": r.detail} for r in results]
        )
    else:
        for r in results:
            _say(f"{'OK ' if r.ok else 'BAD'} {_verified_name(r.directory)}: {r.detail}")
        click.echo(f"{sum(r.ok for r in results)} ok, {sum(not r.ok for r in results)} bad")
    if not all(r.ok for r in results):
        sys.exit(1)


def _verified_name(directory: Path) -> str:
    if directory.parent.parent.name == "snapshots":  # <root>/snapshots/<o>--<r>/<commit>
        return f"snapshot {directory.parent.name.replace('--', '/', 1)}@{directory.name[:12]}"
    return directory.name


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, type=click.IntRange(0, 65535))
@click.option(
    "--upstream",
    envvar="HF_ENDPOINT",
    help="Hub to pull misses from (default: HF_ENDPOINT or https://huggingface.co).",
)
@click.option("--offline", is_flag=True, help="Serve only what is cached; never pull.")
@click.option("--remote", envvar="MODELFETCH_REMOTE", help="Shared tier s3://bucket/prefix.")
@click.option(
    "--max-bytes",
    help="Keep the cache within this size (e.g. 500G): after each pull, remove the least "
    "recently used entries nobody is reading.",
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log to stderr: -v one line per request, -vv debug (query strings are redacted).",
)
@click.pass_context
def serve(
    ctx: click.Context,
    host: str,
    port: int,
    upstream: str | None,
    offline: bool,
    remote: str | None,
    max_bytes: str | None,
    verbose: int,
) -> None:
    """Serve the cache over HTTP, with a Hugging Face compatible resolve route."""
    from .mirror import MirrorServer

    cap = parse_size(max_bytes) if max_bytes is not None else None

    if verbose:
        logging.basicConfig(
            level=logging.INFO,
            format="%(asctime)s %(name)s %(levelname)s %(message)s",
            stream=sys.stderr,
        )
        if verbose > 1:
            # Debug only for loggers whose lines are redacted: botocore's debug lines, for
            # one, would print signed requests.
            for name in ("modelfetch", "urllib3"):
                logging.getLogger(name).setLevel(logging.DEBUG)

    server = MirrorServer(
        ctx.obj.get("cache_dir"),
        host=host,
        port=port,
        upstream=upstream,
        offline=offline,
        options=EnsureOptions(remote=remote),
        max_bytes=cap,
    )
    click.echo(f"modelfetch mirror on {server.url} (cache {server.cache.root})", err=True)
    click.echo(f"use it with: HF_ENDPOINT={server.url}", err=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        server.stop()
