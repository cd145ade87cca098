"""Run by the crash tests: ensure(url) in a child that SIGKILLs itself at a chosen instant.

argv: URL CACHE_DIR KILL_AT RESUME(0|1) CONNECTIONS. The instants are the file-system
operations on the part and its checkpoint (open, truncate, rename, remove), seen through an
audit hook, which runs just before each operation: KILL_AT=N dies right before the N-th one
(1-based), as a ``kill -9`` landing there would. KILL_AT=0 never dies and prints the
operations it saw.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

from modelfetch import ensure

_WATCHED = {"open", "os.truncate", "os.rename", "os.remove"}


def main() -> None:
    url, cache_dir, kill_at_text, resume, connections = sys.argv[1:6]
    kill_at = int(kill_at_text)
    seen: list[str] = []

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event not in _WATCHED:
            return
        where = args[0] if args else None
        name = os.fsdecode(where) if isinstance(where, (str, bytes)) else ""
        if event != "os.truncate" and ".part" not in name:
            return
        seen.append(f"{event} {os.path.basename(name)}".strip())
        if len(seen) == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    sys.addaudithook(hook)
    ensure(
        url,
        cache_dir=cache_dir,
        resume=resume == "1",
        connections=int(connections),
        retry_backoff=0.01,
    )
    print(json.dumps(seen))


if __name__ == "__main__":
    main()
