"""The README's demo: a generated GGUF served by nginx on loopback, fetched by the CLI."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from devtools.genmodel import write_gguf
from devtools.nginx import Nginx


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def cli(cache: Path, *args: str) -> str:
    cmd = [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), *args]
    print("$ modelfetch " + " ".join(shlex.quote(a) for a in cmd[3:]), flush=True)
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    print(out, end="", flush=True)
    print(f"  ({time.perf_counter() - started:.2f}s including Python start-up)", flush=True)
    return out


def main() -> None:
    size_mib = int(sys.argv[1]) if len(sys.argv) > 1 else 256
    with tempfile.TemporaryDirectory(prefix="modelfetch-demo-") as tmp:
        work = Path(tmp)
        www, cache = work / "www", work / "cache"
        www.mkdir()
        step(f"generating a {size_mib} MiB GGUF model")
        sha = write_gguf(www / "demo-model-Q8_0.gguf", size_mib * 1024 * 1024)
        print(f"sha256 {sha}")
        # /slow/ is rate limited so the demo can interrupt a transfer half way
        with Nginx(
            www, extra_server=f"location /slow/ {{ alias {www}/; limit_rate 40m; }}"
        ) as nginx:
            url = nginx.url("demo-model-Q8_0.gguf")
            step(f"nginx serves it at {url}; first fetch downloads, hashes and verifies")
            path = Path(cli(cache, "get", url, "--sha256", sha).strip())
            step("second fetch: a verified cache hit, no network request")
            cli(cache, "get", url, "--sha256", sha)
            log = (nginx.prefix / "access.log").read_text().splitlines()
            print(f"nginx access log: {len(log)} request(s) in total for both fetches")
            step("the cache")
            cli(cache, "ls")
            cli(cache, "verify")
            step("crash safety: kill -9 a download half way, then run it again")
            slow_cache = work / "cache-2"
            slow = f"http://127.0.0.1:{nginx.port}/slow/demo-model-Q8_0.gguf"
            victim = subprocess.Popen(
                [sys.executable, "-m", "modelfetch", "--cache-dir", str(slow_cache), "get",
                 slow, "-q", "-x", "1"],
                stdout=subprocess.DEVNULL,
            )  # fmt: skip
            time.sleep(min(3.0, size_mib / 40 / 2))
            victim.kill()
            victim.wait()
            print(f"killed the downloader (exit {victim.returncode}); the partial file stays")
            cli(slow_cache, "get", slow, "--sha256", sha, "-x", "1")
            print("(the progress bar above started at the bytes already on disk: 'resuming')")
            step("reading the GGUF header back with the gguf library")
            import gguf

            reader = gguf.GGUFReader(os.fspath(path))
            name = reader.fields["general.name"]
            print(f"general.name = {bytes(name.parts[name.data[0]]).decode()}")
            print(f"tensors      = {[t.name for t in reader.tensors]}")
    print("\ndemo finished OK")


if __name__ == "__main__":
    main()
