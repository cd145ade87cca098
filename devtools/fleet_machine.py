"""One "machine" of a fleet, as its own process: ensure(URL) with its own cache root and a
shared S3 tier. Used by the fleet tests and bench/fleet.py.

    python -m devtools.fleet_machine SPEC_JSON

SPEC: {"url", "cache_dir", "markers", "tag", "remote", "endpoint", "chunk_size", "ttl",
"go" (a file to wait for, so that every machine starts at the same moment), and optionally
"connections" and "parallel_below_mbps" (null: all connections at once)}. Touches
MARKERS/TAG.<event kind> for the lifecycle events it sees, and prints one JSON line:
{"sha256", "path", "via", "seconds" (from the go signal to the verified entry), "cpu"
(the process's CPU seconds)} or
{"error": "..."}.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

from modelfetch import ModelFetchError, ProgressEvent, ensure

GO_TIMEOUT = 60.0


def main() -> int:
    spec = json.loads(sys.argv[1])
    markers = Path(spec["markers"])
    tag = spec["tag"]

    def on_event(event: ProgressEvent) -> None:
        if event.kind not in ("progress", "start"):
            (markers / f"{tag}.{event.kind}").touch()

    (markers / f"{tag}.ready").touch()
    go = Path(spec["go"])
    deadline = time.monotonic() + GO_TIMEOUT
    while not go.exists() and time.monotonic() < deadline:
        time.sleep(0.005)
    started = time.monotonic()
    try:
        entry = ensure(
            spec["url"],
            cache_dir=spec["cache_dir"],
            remote=spec["remote"] or None,  # "" or null: no tier
            remote_endpoint=spec["endpoint"],
            remote_chunk_size=int(spec["chunk_size"]),
            remote_lease_ttl=float(spec["ttl"]),
            retry_backoff=0.05,
            connections=int(spec.get("connections", 8)),
            parallel_below_mbps=spec.get("parallel_below_mbps", 150.0),
            progress=on_event,
        )
    except ModelFetchError as exc:
        print(json.dumps({"error": str(exc)}), flush=True)
        return 1
    report = {
        "sha256": entry.sha256,
        "path": str(entry.path),
        "via": entry.via,
        "seconds": time.monotonic() - started,
        "cpu": sum(resource.getrusage(resource.RUSAGE_SELF)[:2]),  # user + system seconds
    }
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
