"""Run in a child process by the concurrency tests: ensure(url) and report as JSON lines.

argv: URL CACHE_DIR MARKER_DIR TAG. Writes MARKER_DIR/TAG.waiting when it has to wait for
another process's download, and prints {"path", "sha256"} on success.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from modelfetch import ProgressEvent, ensure


def main() -> None:
    url, cache_dir, marker_dir, tag = sys.argv[1:5]
    markers = Path(marker_dir)

    def on_event(event: ProgressEvent) -> None:
        if event.kind in ("waiting", "start"):
            (markers / f"{tag}.{event.kind}").touch()

    (markers / f"{tag}.started").touch()
    entry = ensure(url, cache_dir=cache_dir, progress=on_event, retry_backoff=0.01)
    print(json.dumps({"path": str(entry.path), "sha256": entry.sha256}))


if __name__ == "__main__":
    main()
