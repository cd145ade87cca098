"""One real huggingface_hub client, for tests and benchmarks of the mirror.

``python -m devtools.hf_client REPO FILE CACHE_DIR`` (with ``HF_ENDPOINT`` set) imports
huggingface_hub, prints ``ready``, waits for a line on stdin (so that many clients can be
released at the same moment), then runs ``hf_hub_download`` and prints, each on its own
line: ``first-bytes <unix time>`` when the first bytes of the file arrive and ``path
<file>`` at the end.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from huggingface_hub import constants, hf_hub_download
from tqdm import tqdm

# huggingface_hub reads (and reports) a body in 10 MiB pieces; a finer grain shows when the
# first bytes really arrive.
constants.DOWNLOAD_CHUNK_SIZE = 64 * 1024


class FirstBytes(tqdm):
    """huggingface_hub's progress bar, silent, saying when the first bytes came."""

    seen = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        super().__init__(*args, **kwargs)

    def update(self, n: float | None = 1) -> bool | None:
        if n and not FirstBytes.seen:
            FirstBytes.seen = True
            print(f"first-bytes {time.time():.6f}", flush=True)
        return super().update(n)


def main() -> None:
    repo, name, cache_dir = sys.argv[1:4]
    print("ready", flush=True)
    sys.stdin.readline()
    path = hf_hub_download(repo, name, cache_dir=cache_dir, tqdm_class=FirstBytes)
    print(f"path {path}", flush=True)


if __name__ == "__main__":
    main()
