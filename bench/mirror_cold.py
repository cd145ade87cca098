"""Cold-mirror benchmark: N real huggingface_hub clients ask one cold ``modelfetch serve``
for the same file at the same moment; the mirror's upstream is the hub + CDN emulation
(devtools/hub_emulator.py) with the CDN limited per connection.

Printed per client: time to first byte (from the common start), the CDN's body bytes sent
by then (as a fraction of the file: below 1.0 means the client was served while the
upstream download still ran), and its wall time. Then the CDN's body bytes in all (1.0x:
one download for everyone) and how many HEAD and GET requests the mirror saw (one each per
client: no first request timed out and was asked again), and when the upstream download
ended. Every client's file is checked
against the SHA-256. Results go to bench/results/mirror-cold.json.

Usage: bash bench/mirror_cold.sh [--size-mib 1024] [--clients 8] [--rate-mb 10]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.genmodel import random_bytes
from devtools.hub_emulator import HubEmulator

ROOT = Path(__file__).resolve().parents[1]
REPO = "bench/cold-mirror"
FILE = "model-Q8_0.gguf"


@dataclass
class Client:
    tag: str
    proc: subprocess.Popen[str]
    ready: threading.Event = field(default_factory=threading.Event)
    first_at: float | None = None
    origin_at_first: int | None = None
    done_at: float | None = None
    path: Path | None = None
    stderr: list[str] = field(default_factory=list)


def start_client(tag: str, home: Path, endpoint: str, hub: HubEmulator) -> Client:
    env = {
        **os.environ,
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "HF_HUB_DISABLE_XET": "1",
    }
    env.pop("HF_TOKEN", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "devtools.hf_client", REPO, FILE, str(home / "hub")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    client = Client(tag, proc)

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            word, _, rest = line.strip().partition(" ")
            if word == "ready":
                client.ready.set()
            elif word == "first-bytes":
                client.origin_at_first = hub.cdn.body_bytes()
                client.first_at = float(rest)
            elif word == "path":
                client.done_at = time.time()
                client.path = Path(rest)

    def drain() -> None:
        assert proc.stderr is not None
        client.stderr.extend(proc.stderr)

    threading.Thread(target=read, daemon=True).start()
    threading.Thread(target=drain, daemon=True).start()
    return client


def start_mirror(cache: Path, upstream: str) -> tuple[subprocess.Popen[str], str, list[str]]:
    """``modelfetch serve -v`` in its own process; returns it, its URL and its log lines."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), "serve",
         "--port", "0", "--upstream", upstream, "-v"],
        stderr=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    assert proc.stderr is not None
    first = proc.stderr.readline()  # "modelfetch mirror on http://127.0.0.1:PORT (...)"
    url = first.split(" on ", 1)[1].split(" ", 1)[0]
    lines: list[str] = []

    def drain() -> None:
        assert proc.stderr is not None
        lines.extend(proc.stderr)

    threading.Thread(target=drain, daemon=True).start()
    return proc, url, lines


def watch_origin(hub: HubEmulator, size: int) -> list[float]:
    """Fills in (every 0.1 s) when the CDN had sent the whole file: the upstream download's end."""
    done: list[float] = []

    def watch() -> None:
        for _ in range(100_000):
            if hub.cdn.body_bytes() >= size:
                done.append(time.time())
                return
            time.sleep(0.1)

    threading.Thread(target=watch, daemon=True).start()
    return done


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(16 * 1024 * 1024):
            h.update(block)
    return h.hexdigest()


def run(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * 1024 * 1024
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data = random_bytes(size, seed=5)
    sha = hashlib.sha256(data).hexdigest()
    with HubEmulator() as hub:
        hub.create_repo(REPO, {FILE: data})
        del data  # the emulator keeps its own reference
        hub.cdn.rate = args.rate_mb * 1e6
        mirror, url, log = start_mirror(work / "mirror", hub.endpoint)
        clients: list[Client] = []
        try:
            clients = [
                start_client(f"client{i}", work / f"client{i}", url, hub)
                for i in range(args.clients)
            ]
            for c in clients:
                if not c.ready.wait(300):
                    raise SystemExit(f"{c.tag} did not start: {''.join(c.stderr)[-2000:]}")
            start = time.time()
            for c in clients:
                assert c.proc.stdin is not None
                c.proc.stdin.write("go\n")
                c.proc.stdin.flush()
            origin_done = watch_origin(hub, size)
            limit = size / (args.rate_mb * 1e6) * 4 + 300
            for c in clients:
                c.proc.wait(timeout=max(1.0, limit - (time.time() - start)))
            origin = hub.cdn.body_bytes()
        finally:
            for c in clients:
                if c.proc.poll() is None:
                    c.proc.kill()
            mirror.terminate()
            mirror.wait(timeout=30)
    resolve = f"/{REPO}/resolve/main/{FILE}"
    heads = sum(f'"HEAD {resolve}"' in line for line in log)
    gets = sum(f'"GET {resolve}"' in line for line in log)
    rows = []
    for c in clients:
        ok = c.proc.returncode == 0 and c.path is not None and sha256_file(c.path) == sha
        rows.append(
            {
                "client": c.tag,
                "ok": ok,
                "first_byte_s": None if c.first_at is None else c.first_at - start,
                "origin_fraction_at_first_byte": (
                    None if c.origin_at_first is None else c.origin_at_first / size
                ),
                "wall_s": None if c.done_at is None else c.done_at - start,
                "error": None if ok else "".join(c.stderr)[-500:],
            }
        )
    shutil.rmtree(work, ignore_errors=True)
    return {
        "size_bytes": size,
        "clients": args.clients,
        "rate_mb_per_connection": args.rate_mb,
        "origin_bytes": origin,
        "origin_ratio": origin / size,
        "origin_done_s": origin_done[0] - start if origin_done else None,
        "mirror_heads": heads,
        "mirror_gets": gets,
        "per_client": rows,
        "load_average": os.getloadavg(),
    }


def show(result: dict[str, Any]) -> None:
    size = int(result["size_bytes"])
    print(
        f"{result['clients']} huggingface_hub clients, one cold mirror, "
        f"{size / 2**20:.0f} MiB at {result['rate_mb_per_connection']} MB/s per CDN connection"
    )
    print(f"{'client':<10} {'first byte s':>12} {'origin sent then':>17} {'wall s':>8}  ok")
    for row in result["per_client"]:
        first = row["first_byte_s"]
        frac = row["origin_fraction_at_first_byte"]
        wall = row["wall_s"]
        print(
            f"{row['client']:<10} {'-' if first is None else f'{first:.2f}':>12} "
            f"{'-' if frac is None else f'{frac:.3f}x':>17} "
            f"{'-' if wall is None else f'{wall:.1f}':>8}  {'yes' if row['ok'] else 'NO'}"
        )
    done = result["origin_done_s"]
    if done is not None:
        print(f"the upstream download (mirror <- CDN) ended at {float(done):.1f} s")
    print(
        f"origin (CDN) bytes: {result['origin_bytes']} = {result['origin_ratio']:.4f}x the file; "
        f"mirror saw {result['mirror_heads']} HEAD and {result['mirror_gets']} GET; "
        f"load average {result['load_average']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rate-mb", type=float, default=10, help="CDN limit per connection")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfetch-bench-mirror"))
    args = parser.parse_args()
    result = run(args)
    show(result)
    out = ROOT / "bench" / "results" / "mirror-cold.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
