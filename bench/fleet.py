"""Fleet benchmark: N machines (processes, each its own cache root) fetch one file through
a shared tier (a real SeaweedFS) from a throttled origin (nginx, limit_rate per connection).

Scenarios, each against a fresh bucket and fresh cache roots:
  alone     one machine, no tier (what the tier costs a single machine)
  cold      one machine alone with the tier (the reference: one cold download)
  together  N machines released at the same moment
  staggered N machines started --stagger seconds apart
  killed    N machines together, the leader killed with SIGKILL half way

Printed per scenario: origin bytes (from nginx's access log, as a multiple of the file
size), each machine's wall time (from its start signal to its verified entry) and how it
got the file, and the slowest machine's time as a ratio to the cold download.

Usage: bash bench/fleet.sh [--size-mib 256] [--machines 8] [--rate-mb 4] [--ttl 3] [--chunk-mib 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.run import make_file
from devtools.nginx import Nginx
from devtools.seaweed import SeaweedFS

ROOT = Path(__file__).resolve().parents[1]
_LOG_LINE = re.compile(r'"GET (\S+) HTTP/[\d.]+" (\d{3}) (\d+)')


@dataclass
class Machine:
    tag: str
    go: Path
    proc: subprocess.Popen[str]
    killed: bool = False
    seconds: float | None = None
    cpu: float | None = None
    via: str = ""


@dataclass
class Result:
    title: str
    origin_bytes: int
    machines: list[Machine]

    def slowest(self) -> float | None:
        walls = [m.seconds for m in self.machines if m.seconds is not None]
        return max(walls) if walls else None

    def to_dict(self) -> dict[str, object]:
        return {
            "scenario": self.title,
            "origin_bytes": self.origin_bytes,
            "machines": [
                {"tag": m.tag, "seconds": m.seconds, "cpu": m.cpu, "via": m.via}
                for m in self.machines
            ],
        }


def origin_bytes(nginx: Nginx, name: str) -> int:
    """Body bytes nginx sent for ``name`` (killed connections count what really left)."""
    total = 0
    for line in (nginx.prefix / "access.log").read_text(errors="replace").splitlines():
        match = _LOG_LINE.search(line)
        if match and match.group(1) == f"/{name}":
            total += int(match.group(3))
    return total


def wait_until(condition: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


class Bench:
    def __init__(self, args: argparse.Namespace, nginx: Nginx, weed: SeaweedFS) -> None:
        self.args = args
        self.nginx = nginx
        self.weed = weed
        self.work: Path = args.workdir
        self.url = nginx.url(args.name)
        self.size = args.size_mib * 1024 * 1024
        self.machines_dir: Path = args.machines_dir or self.work / "machines"

    def launch(self, tag: str, remote: str, go: Path) -> Machine:
        spec = {
            "url": self.url,
            "cache_dir": str(self.machines_dir / tag),
            "markers": str(self.work / "markers"),
            "tag": tag,
            "remote": remote,
            "endpoint": self.weed.endpoint,
            "chunk_size": self.args.chunk_mib * 1024 * 1024,
            "ttl": self.args.ttl,
            "go": str(go),
        }
        proc = subprocess.Popen(
            [sys.executable, "-m", "devtools.fleet_machine", json.dumps(spec)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        return Machine(tag, go, proc)

    def marker(self, machine: Machine, kind: str) -> bool:
        return (self.work / "markers" / f"{machine.tag}.{kind}").exists()

    def run(
        self, title: str, count: int, stagger: float = 0.0, kill: bool = False, tier: bool = True
    ) -> Result:
        for folder in (self.machines_dir, self.work / "markers", self.work / "go"):
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        bucket = f"fleet-{uuid.uuid4().hex[:10]}"
        self.weed.client().create_bucket(Bucket=bucket)
        remote = f"s3://{bucket}/models" if tier else ""
        (self.nginx.prefix / "access.log").write_text("")  # nginx appends at its offset
        os.sync()
        together = self.work / "go" / "all"
        machines = [
            self.launch(f"m{i}", remote, together if not stagger else self.work / "go" / f"m{i}")
            for i in range(count)
        ]
        # every process has imported everything before the clock starts
        wait_until(lambda: all(self.marker(m, "ready") for m in machines), 300)
        for m in machines:
            m.go.touch()
            if stagger:
                time.sleep(stagger)
        if kill:
            self.kill_leader_half_way(machines)
        for m in machines:
            out, _err = m.proc.communicate(timeout=3600)
            if m.killed:
                m.via = "killed"
                continue
            lines = out.strip().splitlines()
            report = json.loads(lines[-1]) if lines else {"error": "no output"}
            m.seconds = report.get("seconds")
            m.cpu = report.get("cpu")
            m.via = str(report.get("via") or report.get("error"))
        return Result(title, origin_bytes(self.nginx, self.args.name), machines)

    def kill_leader_half_way(self, machines: list[Machine]) -> None:
        wait_until(lambda: any(self.marker(m, "tier_lead") for m in machines), 120)
        leaders = [m for m in machines if self.marker(m, "tier_lead")]
        if not leaders:
            return
        wait_until(lambda: origin_bytes(self.nginx, self.args.name) >= self.size // 2, 3600)
        leaders[0].proc.send_signal(signal.SIGKILL)
        leaders[0].killed = True


def show(result: Result, size: int, cold: float | None) -> None:
    print(f"\n== {result.title}: origin bytes {result.origin_bytes / size:.2f}x the file size")
    for m in result.machines:
        seconds = f"{m.seconds:7.2f} s" if m.seconds is not None else "      -  "
        cpu = f"cpu {m.cpu:5.2f} s" if m.cpu is not None else ""
        print(f"   {m.tag:4} {seconds}  {cpu:12} {m.via}")
    slowest = result.slowest()
    if slowest is not None and cold:
        print(f"   slowest {slowest:.2f} s = {slowest / cold:.2f}x one cold download")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=256)
    parser.add_argument("--machines", type=int, default=8)
    parser.add_argument("--rate-mb", type=int, default=4, help="origin limit per connection")
    parser.add_argument("--ttl", type=float, default=3.0, help="lease ttl in seconds")
    parser.add_argument("--chunk-mib", type=int, default=8)
    parser.add_argument("--stagger", type=float, default=2.0)
    parser.add_argument("--scenarios", default="together,staggered,killed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfetch-bench-fleet"))
    parser.add_argument(
        "--machines-dir",
        type=Path,
        help="where the machines' cache roots go (default: in --workdir); on one host all "
        "machines share one disk, a tmpfs (/dev/shm/...) takes that contention away",
    )
    args = parser.parse_args()
    args.name = f"fleet-{args.size_mib}m.bin"
    (args.workdir / "www").mkdir(parents=True, exist_ok=True)
    make_file(args.workdir / "www" / args.name, args.size_mib * 1024 * 1024, seed=31)
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "modelfetch-bench")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "modelfetch-bench-secret")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    size = args.size_mib * 1024 * 1024
    limit = f"limit_rate {args.rate_mb}m;"
    results = []
    with Nginx(args.workdir / "www", extra_server=limit) as nginx, SeaweedFS() as weed:
        print(
            f"{args.size_mib} MiB from nginx limited to {args.rate_mb} MB/s per connection; "
            f"tier: SeaweedFS on loopback; lease ttl {args.ttl:g} s; chunks {args.chunk_mib} MiB"
        )
        bench = Bench(args, nginx, weed)
        alone = bench.run("one machine, no tier", 1, tier=False)
        cold_run = bench.run("cold: one machine with the tier (the reference)", 1)
        cold = cold_run.slowest()
        show(alone, size, cold)
        show(cold_run, size, cold)
        results += [alone, cold_run]
        plans = {
            "together": ("together", {}),
            "staggered": (f"started {args.stagger:g} s apart", {"stagger": args.stagger}),
            "killed": ("together, the leader killed -9 half way", {"kill": True}),
        }
        for key, (title, extra) in plans.items():
            if key in args.scenarios.split(","):
                result = bench.run(f"{args.machines} machines {title}", args.machines, **extra)
                show(result, size, cold)
                results.append(result)
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    doc = {"args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    doc["results"] = [r.to_dict() for r in results]
    (out / "fleet.json").write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
