"""One origin download for a whole fleet, through the shared tier.

``fetch`` is what ``ensure`` does on a local miss when a tier is configured:

1. A finished copy in the tier (``manifest.json`` + chunks, or the single object older
   versions wrote) is downloaded and verified: via ``"tier"``.
2. Otherwise the lease (lease.py) decides. The machine that takes it downloads from the
   origin and publishes verified chunks while it downloads (via ``"origin"``); the others
   stream those chunks into their own part files as they appear (via ``"peer"``). When the
   holder stops renewing the lease (killed, cut off), one follower takes it over, keeps the
   chunks it has verified, and fetches only the rest from the origin with ``Range``
   (via ``"takeover"``); the remaining followers follow the new holder.

Every wait is bounded: a follower waits while the holder renews its lease *and* reports
progress; a lease that is not renewed within its ttl is taken over; a holder that renews
but makes no progress for ``stall`` seconds is given up on (the follower downloads from the
origin itself). Any trouble with the tier itself costs a warning and a download from the
origin, never the download.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from .cache import CacheEntry
from .cache.part import discard_part, part_paths
from .errors import CancelledError, DownloadError, IntegrityError, ModelFetchError
from .fetch.base import FetchResult
from .fetch.http import HttpDownloader
from .fetch.tier import RemoteTier, TierObject
from .lease import Held, Lease, Watch, decode_lease, new_token, owner_id, take, take_over
from .options import EnsureOptions
from .progress import ProgressEmitter
from .source import ModelSource
from .tierstream import (
    ChunkLedger,
    LeaseKeeper,
    Manifest,
    PartFiller,
    Publisher,
    read_manifest,
    upload_file,
    write_manifest,
)

log = logging.getLogger("modelfetch")
T = TypeVar("T")

VIA_TIER = "tier"  # a finished copy in the shared tier
VIA_PEER = "peer"  # streamed from another machine's download while it ran (or waited for it)
VIA_ORIGIN = "origin"  # downloaded from the origin (by this machine, for the fleet)
VIA_TAKEOVER = "takeover"  # followed a machine that died, then finished from the origin

SETTLE = 0.2  # seconds between taking a lease and reading it back to confirm
# Lease polls: every poll is a signed request and a parse, so not faster than this even
# right after progress (a follower trails the leader by about a chunk anyway).
POLL_MIN = 0.2
POLL_MAX = 1.0
MAX_ROUNDS = 1_000_000  # a last-resort bound; the time bounds above end the wait first
MAX_FOLLOW_RESTARTS = 3


@dataclass(frozen=True)
class Outcome:
    """What the fleet got; the tier holds the file now (or publishing it was tried)."""

    result: FetchResult
    via: str


class TierTrouble(Exception):
    """The tier cannot help with this file; the message says why (shown as a warning)."""


def stall_limit(opts: EnsureOptions) -> float:
    """How long a holder may renew its lease without progress before followers give up:
    long enough for the holder's own retries against a struggling origin."""
    return max(6 * opts.remote_lease_ttl, 2 * opts.read_timeout)


def fetch(
    tier: RemoteTier,
    source: ModelSource,
    directory: Path,
    opts: EnsureOptions,
    emitter: ProgressEmitter,
    origin: Callable[[], FetchResult],
) -> Outcome | None:
    """Fetch ``source`` into ``directory``'s part file with the fleet's help; None: the
    tier could not help and nothing is held, the caller downloads from the origin."""
    return _Fleet(tier, source, directory, opts, emitter, origin).run()


def publish_entry(
    tier: RemoteTier, source: ModelSource, entry: CacheEntry, opts: EnsureOptions
) -> bool:
    """Copy a finished entry into the tier unless the tier already has this very file.
    Returns True if something was uploaded."""
    found = read_manifest(tier, source)
    if found is not None and found[0] is not None and found[0].sha256 == entry.sha256:
        return False
    upload_file(
        tier,
        source,
        entry.path,
        entry.sha256,
        entry.size,
        opts.remote_chunk_size,
        entry.commit,
    )
    return True


class _Fleet:
    def __init__(
        self,
        tier: RemoteTier,
        source: ModelSource,
        directory: Path,
        opts: EnsureOptions,
        emitter: ProgressEmitter,
        origin: Callable[[], FetchResult],
    ) -> None:
        self.tier = tier
        self.source = source
        self.directory = directory
        self.opts = opts
        self.emit = emitter
        self.origin = origin
        self.store = tier.lease_store(source)
        self.pin = opts.sha256
        self.ttl = float(opts.remote_lease_ttl)
        self.stall = stall_limit(opts)
        self.filler: PartFiller | None = None
        self.following: Lease | None = None
        self.ignored: set[str] = set()  # ETags of manifests found unusable
        self.restarts = 0

    # -- plumbing ------------------------------------------------------------------------
    def _io(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a tier operation; any failure of the tier becomes TierTrouble."""
        try:
            return fn(*args)
        except CancelledError:
            raise
        except (IntegrityError, DownloadError) as exc:
            raise TierTrouble(f"shared tier copy rejected: {exc}") from None
        except ModelFetchError:
            raise
        except Exception as exc:
            raise TierTrouble(f"shared tier unavailable ({type(exc).__name__})") from None

    def _sleep(self, seconds: float) -> None:
        if self.opts.cancel is not None:
            self.opts.cancel.sleep(seconds)
        else:
            time.sleep(seconds)

    def _drop_filler(self) -> None:
        if self.filler is not None:
            self.filler.close()
            self.filler = None

    def _filler(self, size: int, chunk_size: int) -> PartFiller:
        filler = self.filler
        if filler is not None and (filler.size, filler.chunk_size) == (size, chunk_size):
            return filler
        if filler is not None:
            self._drop_filler()
            self.restarts += 1
            if self.restarts > MAX_FOLLOW_RESTARTS:
                raise TierTrouble("the file in the shared tier keeps changing")
        self.filler = self._io(
            PartFiller,
            self.tier,
            self.source,
            self.directory,
            size,
            chunk_size,
            self.emit,
            self.opts.cancel,
        )
        return self.filler

    # -- the whole flow ------------------------------------------------------------------
    def run(self) -> Outcome | None:
        try:
            return self._complete_copy(first=True) or self._coordinate()
        except TierTrouble as exc:
            self.emit.emit("warning", message=str(exc))
            self._park()
            return None
        finally:
            self._drop_filler()

    def _park(self) -> None:
        """Leave what we verified where the origin download will resume from it."""
        if self.filler is None or self.filler.held_bytes == 0:
            return
        lease = self.following
        try:
            self.filler.checkpoint(lease, self.pin or (lease.sha256 if lease else None))
        except OSError as exc:
            log.debug("could not checkpoint the followed part: %r", exc)

    def _complete_copy(self, first: bool) -> Outcome | None:
        """A finished copy in the tier, downloaded and verified; None if there is none."""
        found = self._io(read_manifest, self.tier, self.source)
        if found is not None:
            manifest, etag = found
            usable = manifest is not None and (self.pin is None or manifest.sha256 == self.pin)
            if manifest is not None and usable and etag not in self.ignored:
                try:
                    return self._from_manifest(manifest)
                except TierTrouble as exc:
                    self.emit.emit("warning", message=str(exc))
                    self._drop_filler()
                    discard_part(self.directory, self.source.file_name)
            self.ignored.add(etag)
        if first:
            legacy = self._io(self.tier.lookup, self.source)
            if legacy is not None and (self.pin is None or legacy.sha256 == self.pin):
                return self._from_single_object(legacy)
        return None

    def _from_manifest(self, manifest: Manifest) -> Outcome:
        via = VIA_PEER if self.following is not None else VIA_TIER
        if via == VIA_TIER:
            self.emit.emit("tier_hit", 0, manifest.size)
        filler = self._filler(manifest.size, manifest.chunk_size)
        self._io(filler.sync, manifest.chunks)
        expected = [manifest.sha256] + ([self.pin] if self.pin else [])
        digest, size = self._io(filler.finish, expected)
        self.filler = None
        result = FetchResult(digest, size, None, None, commit=manifest.commit)
        return Outcome(result, via)

    def _from_single_object(self, obj: TierObject) -> Outcome | None:
        """The layout older versions wrote: one object, downloaded like any URL."""
        url = self._io(self.tier.presigned_get, obj)
        self.emit.emit("tier_hit", 0, obj.size)
        downloader = HttpDownloader(url, {}, self.opts.merged(sha256=obj.sha256), self.emit)
        try:
            result = downloader.fetch(self.directory, self.source.file_name, self.source.cache_key)
        except (IntegrityError, DownloadError) as exc:
            discard_part(self.directory, self.source.file_name)
            self.emit.emit("warning", message=f"shared tier copy rejected: {exc}")
            return None
        # The tier's ETag is not the origin's: a later refresh must revalidate with the origin.
        return Outcome(replace(result, etag=None, last_modified=None), VIA_TIER)

    def _coordinate(self) -> Outcome:
        """Follow, lead or take over until the file is here. A holder writes the manifest
        before it removes its lease, so the manifest is looked for only when the lease is
        gone or dead: a follower never mistakes a finished download for an abandoned one."""
        watch = Watch()
        delay = POLL_MIN
        for _ in range(MAX_ROUNDS):
            if self.opts.cancel is not None:
                self.opts.cancel.check()
            current = self._io(self.store.read)
            if current is None:
                done = self._complete_copy(first=False)
                if done is not None:
                    return done
                held = self._io(take, self.store, self._new_lease(None), SETTLE, self._sleep)
                if held is not None:
                    return self._lead(None, held, takeover=False)
                continue  # someone else was quicker: read their lease
            lease, etag = decode_lease(current[0]), current[1]
            now = time.monotonic()
            watch.see(lease, etag, now)
            if watch.dead(lease, now, time.time(), self.ttl):
                outcome = self._complete_copy(first=False) or self._try_take_over(lease, etag)
                if outcome is not None:
                    return outcome
                continue
            progressed = False
            if lease is not None:
                progressed = self._follow(lease)
                if watch.stalled(now, self.stall):
                    raise TierTrouble(
                        f"{lease.owner} has made no progress for {self.stall:.0f}s; "
                        "downloading from the origin instead"
                    )
            delay = POLL_MIN if progressed else min(POLL_MAX, delay * 1.5)
            self._sleep(delay)
        raise TierTrouble("gave up waiting for the shared tier")

    def _follow(self, lease: Lease) -> bool:
        if self.pin is not None and lease.sha256 is not None and lease.sha256 != self.pin:
            raise TierTrouble(f"{lease.owner} is downloading a different version of this file")
        if self.following is None:
            self.emit.emit(
                "tier_follow",
                message=f"{lease.owner} is downloading this file; streaming it from the "
                "shared tier",
            )
        self.following = lease
        if lease.size is None or (not lease.published and self.filler is None):
            return False
        filler = self._filler(lease.size, lease.chunk_size)
        return self._io(filler.sync, lease.chunks)

    def _try_take_over(self, dead: Lease | None, etag: str) -> Outcome | None:
        if dead is not None and dead.size is not None and dead.published:
            try:  # first collect everything it published: the origin is the expensive part
                self._filler(dead.size, dead.chunk_size).sync(dead.chunks)
            except CancelledError:
                raise
            except Exception as exc:  # keep what was verified; the origin has the rest
                log.debug("catching up before a take-over: %r", exc)
        fresh = self._new_lease(dead)
        held = self._io(take_over, self.store, fresh, etag, SETTLE, self._sleep)
        if held is None:
            return None
        return self._lead(dead, held, takeover=dead is not None)

    def _new_lease(self, dead: Lease | None) -> Lease:
        """A lease for this machine; after a take-over it carries on the dead one's work:
        the chunks we verified, the size and the origin's validator."""
        base = Lease(
            token=new_token(),
            owner=owner_id(),
            ttl=self.ttl,
            chunk_size=self.opts.remote_chunk_size,
            wall=time.time(),
            sha256=self.pin,
        )
        filler = self.filler
        if dead is None or filler is None or dead.size is None:
            return base
        if (filler.size, filler.chunk_size) != (dead.size, dead.chunk_size):
            return base
        # Its chunks stay listed (they are in the tier; we fetched what we could of them),
        # and the in-order pass of our own download checks every one of them.
        return replace(
            base,
            chunk_size=dead.chunk_size,
            size=dead.size,
            sha256=self.pin or dead.sha256,
            etag=dead.etag,
            last_modified=dead.last_modified,
            done=filler.held_bytes,
            chunks=dead.chunks,
        )

    # -- leading -------------------------------------------------------------------------
    def _lead(self, previous: Lease | None, held: Held, takeover: bool) -> Outcome:
        lease = held.lease
        if takeover:
            self.emit.emit(
                "tier_takeover",
                message=f"{previous.owner if previous else 'the holder'} stopped renewing its "
                "lease; continuing its download from the origin",
            )
        else:
            self.emit.emit("tier_lead", message="downloading from the origin for the fleet")
        if self.filler is not None:
            source_lease = previous if takeover else self.following
            if self.filler.held_bytes:  # the origin download fetches only the gaps
                self.filler.checkpoint(source_lease, self.pin or lease.sha256)
            self._drop_filler()
        ledger = ChunkLedger(lease.chunk_size, adjustable=not lease.published)
        keeper = LeaseKeeper(self.store, held, lambda: ledger.pos, max(0.2, self.ttl / 3))
        part = part_paths(self.directory, self.source.file_name)[0]
        publisher = Publisher(self.tier, self.source, part, ledger, keeper, lease.chunks)
        keeper.progress = lambda: max(ledger.pos, publisher.seen_bytes)
        self.emit.tap = ledger.feed
        self.emit.listener = lambda kind: ledger.restart() if kind == "restart" else None
        keeper.start()
        publisher.start()
        try:
            result = self.origin()
        except BaseException:
            publisher.stop(wait=5.0)
            keeper.close()  # followers take over at once instead of waiting for the ttl
            raise
        finally:
            self.emit.tap = None
            self.emit.listener = None
        self._publish(result, ledger, publisher, keeper)
        return Outcome(result, VIA_TAKEOVER if takeover else VIA_ORIGIN)

    def _publish(
        self, result: FetchResult, ledger: ChunkLedger, publisher: Publisher, keeper: LeaseKeeper
    ) -> None:
        """Finish publishing (the last chunks, then the manifest), then drop the lease."""
        try:
            refs = publisher.drain(result.size) if ledger.finish(result.size) else None
            publisher.stop()
            if refs is not None:
                manifest = Manifest(
                    result.size, result.sha256, ledger.chunk_size, refs, result.commit
                )
                write_manifest(self.tier, self.source, manifest)
            else:  # the in-order pass was disturbed: publish the finished file instead
                log.debug("publishing the whole file: %s", publisher.error)
                upload_file(
                    self.tier,
                    self.source,
                    part_paths(self.directory, self.source.file_name)[0],
                    result.sha256,
                    result.size,
                    ledger.chunk_size,
                    result.commit,
                    have=dict(publisher.refs),
                )
        except CancelledError:
            raise
        except Exception as exc:  # the local download is good; the tier is an optimisation
            self.emit.emit("warning", message=f"could not copy to the shared tier ({exc})")
            return
        finally:
            publisher.stop()
            keeper.close()
        self.emit.emit("tier_upload", result.size, result.size)
