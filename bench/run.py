"""Benchmark modelfetch against curl, aria2c, huggingface_hub and pooch, in one run.

Everything runs on loopback: nginx serves generated files (with the headers the Hugging Face
resolve endpoint sends, so huggingface_hub's hf_hub_download works against it). Every tool
runs as its own process; we record the process's wall time and peak RSS (ru_maxrss from
wait4), and Python tools also report the time spent inside the download call itself. Before
each run the page cache's dirty pages are flushed (`sync`) so no tool pays for the previous
tool's writeback.

Usage: bash bench/run.sh [--size-mib 1024] [--hit-size-mib 4096] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from devtools.nginx import Nginx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
REPO = "bench/model"
CDN_RATE_MB = 60
CDN_TOOLS = ("curl", "aria2c -x8", "modelfetch (default)", "modelfetch -x8 always")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


NOTES = {
    "curl": "no hash, no fsync",
    "curl + sync": "durable, no hash",
    "curl + sha256sum": "verified (2nd read), not durable",
    "aria2c -x8": "no hash, no fsync",
    "huggingface_hub": "no hash check",
    "pooch (known_hash)": "hash after download (2nd read)",
    "modelfetch (default)": "one stream + O_DIRECT; adds streams if < 150 MB/s",
    "modelfetch -x1": "SHA-256 inline, O_DIRECT, fsynced, atomic",
    "modelfetch -x8 always": "8 streams from the start, SHA-256 in order",
}


@dataclass
class Sample:
    wall: float
    call: float | None
    rss_mib: float


@dataclass
class Row:
    name: str
    samples: list[Sample] = field(default_factory=list)
    note: str = ""

    def median(self, attr: str) -> float:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else float("nan")


def make_file(path: Path, size: int, seed: int) -> str:
    """Random-looking content, written in 64 MiB blocks; returns the SHA-256 (cached)."""
    sha_file = path.with_suffix(path.suffix + ".sha256")
    if path.exists() and path.stat().st_size == size and sha_file.exists():
        return sha_file.read_text().strip()
    import numpy as np

    block = np.random.default_rng(seed).integers(0, 256, 64 << 20, dtype=np.uint8).tobytes()
    hasher = hashlib.sha256()
    with open(path, "wb") as fh:
        left = size
        i = 0
        while left > 0:
            # vary each block so no layer can deduplicate or compress it away
            chunk = (i.to_bytes(8, "little") + block[8:])[: min(len(block), left)]
            fh.write(chunk)
            hasher.update(chunk)
            left -= len(chunk)
            i += 1
    sha = hasher.hexdigest()
    sha_file.write_text(sha)
    return sha


def _peak_rss_mib(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Sample VmHWM (the RSS high-water mark, reset at exec) until the process ends.

    wait4's ru_maxrss is no use here: a forked child inherits the parent's RSS as its
    starting maximum, so every tool would look as big as this benchmark process.
    """
    status = Path(f"/proc/{pid}/status")
    while not stop.is_set():
        try:
            for line in status.read_text().splitlines():
                if line.startswith("VmHWM:"):
                    out.append(int(line.split()[1]) / 1024)
        except (OSError, ValueError):
            pass
        stop.wait(0.005)


def run_process(cmd: list[str], env: dict[str, str] | None = None) -> Sample:
    os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stop, peaks = threading.Event(), [0.0]
    sampler = threading.Thread(target=_peak_rss_mib, args=(proc.pid, stop, peaks))
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - started
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {err.decode(errors='replace')[-2000:]}")
    call = None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("BENCH "):
            call = float(json.loads(line[6:])["seconds"])
    return Sample(wall, call, max(peaks))


def py_tool(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def hf_env(home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home)}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["HF_HUB_DISABLE_XET"] = "1"
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def download_commands(
    work: Path, url: str, hf_endpoint: str, name: str, sha: str
) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    out = work / "out"
    target = work / "curl" / name
    return {
        "curl": (["curl", "-s", "-o", str(target), url], None),
        "curl + sync": (["sh", "-c", f'curl -s -o "{target}" "{url}" && sync "{target}"'], None),
        "curl + sha256sum": (
            [
                "sh",
                "-c",
                f'curl -s -o "{target}" "{url}" && sha256sum "{target}"',
            ],
            None,
        ),
        "aria2c -x8": (
            [
                "aria2c",
                "-q",
                "-x8",
                "-s8",
                "-k1M",
                "--file-allocation=falloc",
                "--allow-overwrite=true",
                "-d",
                str(work / "curl"),
                "-o",
                name,
                url,
            ],
            None,
        ),
        "huggingface_hub": (
            py_tool(f"""
                import json, time
                from huggingface_hub import hf_hub_download
                t = time.perf_counter()
                hf_hub_download({REPO!r}, {name!r}, cache_dir={str(work / "hf")!r})
                print("BENCH " + json.dumps({{"seconds": time.perf_counter() - t}}))
            """),
            hf_env(work / "hfhome", hf_endpoint),
        ),
        "pooch (known_hash)": (
            py_tool(f"""
                import json, time, pooch
                t = time.perf_counter()
                pooch.retrieve({url!r}, known_hash="sha256:{sha}", path={str(out)!r},
                               fname={name!r}, progressbar=False)
                print("BENCH " + json.dumps({{"seconds": time.perf_counter() - t}}))
            """),
            None,
        ),
        "modelfetch (default)": (mf_get(work, url, sha, 8, 150.0), None),
        "modelfetch -x1": (mf_get(work, url, sha, 1, 150.0), None),
        "modelfetch -x8 always": (mf_get(work, url, sha, 8, None), None),
    }


def mf_get(
    work: Path, url: str, sha: str, connections: int, parallel_below: float | None
) -> list[str]:
    return py_tool(f"""
        import json, time
        from modelfetch import ensure
        t = time.perf_counter()
        ensure({url!r}, cache_dir={str(work / "mf")!r}, sha256={sha!r},
               connections={connections}, parallel_below_mbps={parallel_below!r})
        print("BENCH " + json.dumps({{"seconds": time.perf_counter() - t}}))
    """)


def reset_outputs(work: Path) -> None:
    for sub in ("out", "hf", "mf", "curl"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)


def hit_commands(
    work: Path, url: str, hf_endpoint: str, name: str, sha: str, calls: int
) -> dict[str, tuple[list[str], dict[str, str] | None, str]]:
    timing = f"""
        times = []
        for _ in range({calls}):
            t = time.perf_counter(); CALL; times.append(time.perf_counter() - t)
        times.sort()
        print("BENCH " + json.dumps({{"seconds": times[len(times) // 2]}}))
    """

    def script(setup: str, call: str, n: int = calls) -> list[str]:
        body = timing.replace("CALL", call).replace(f"range({calls})", f"range({n})")
        return py_tool("import json, time\n" + textwrap.dedent(setup) + textwrap.dedent(body))

    mf = str(work / "mf")
    return {
        "modelfetch": (
            script(
                f"from modelfetch import ensure\nensure({url!r}, cache_dir={mf!r}, sha256={sha!r})",
                f"ensure({url!r}, cache_dir={mf!r}, sha256={sha!r})",
            ),
            None,
            "yes: stat stamp of the last full hash, SHA-256 pinned",
        ),
        "pooch (known_hash)": (
            script(
                "import pooch",
                f"pooch.retrieve({url!r}, known_hash='sha256:{sha}', path={str(work / 'out')!r},"
                f" fname={name!r}, progressbar=False)",
                n=3,
            ),
            None,
            "yes: re-hashes the whole file on every call",
        ),
        "huggingface_hub (offline)": (
            script(
                "from huggingface_hub import hf_hub_download",
                f"hf_hub_download({REPO!r}, {name!r}, cache_dir={str(work / 'hf')!r})",
            ),
            hf_env(work / "hfhome", hf_endpoint, offline=True),
            "no: returns the path unchecked",
        ),
        "huggingface_hub (online)": (
            script(
                "from huggingface_hub import hf_hub_download",
                f"hf_hub_download({REPO!r}, {name!r}, cache_dir={str(work / 'hf')!r})",
            ),
            hf_env(work / "hfhome", hf_endpoint),
            "no: a HEAD request per call, file unchecked",
        ),
    }


def print_download_table(title: str, rows: list[Row], size: int) -> list[dict[str, object]]:
    curl = next(r for r in rows if r.name == "curl").median("wall")
    print(f"\n{title}")
    print(
        f"{'tool':24} {'median wall s':>13} {'in-call s':>10} {'MB/s':>8} "
        f"{'vs curl':>8} {'peak RSS MiB':>13}  note"
    )
    report = []
    for row in rows:
        wall = row.median("wall")
        call = row.median("call")
        rss = max(s.rss_mib for s in row.samples)
        ratio = curl / wall
        call_text = f"{call:10.2f}" if call == call else f"{'-':>10}"
        print(
            f"{row.name:24} {wall:13.2f} {call_text} {size / wall / 1e6:8.0f} "
            f"{ratio:7.2f}x {rss:13.0f}  {row.note}"
        )
        report.append(
            {"tool": row.name, "median_wall_s": wall, "median_call_s": call, "ratio_vs_curl": ratio,
             "peak_rss_mib": rss, "runs": [s.wall for s in row.samples]}
        )  # fmt: skip
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--hit-size-mib", type=int, default=4096)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--hit-calls", type=int, default=50)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfetch-bench"))
    args = parser.parse_args()

    work = args.workdir
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    size, hit_size = args.size_mib << 20, args.hit_size_mib << 20
    name, hit_name = f"model-{args.size_mib}m.gguf", f"model-{args.hit_size_mib}m.gguf"
    print(f"generating {args.size_mib} MiB and {args.hit_size_mib} MiB files in {www} ...")
    sha = make_file(www / name, size, seed=1)
    hit_sha = make_file(www / hit_name, hit_size, seed=2)

    # nginx answers the Hugging Face resolve route with the headers huggingface_hub reads.
    extra_http = f"""
    map $uri $linked_etag {{
        default "";
        "/{REPO}/resolve/main/{name}" "\\"{sha}\\"";
        "/{REPO}/resolve/main/{hit_name}" "\\"{hit_sha}\\"";
    }}"""
    extra_server = f"""
    location /cdn/ {{
        alias {www}/;
        limit_rate {CDN_RATE_MB}m;
    }}
    location /{REPO}/resolve/main/ {{
        alias {www}/;
        add_header X-Repo-Commit {COMMIT} always;
        add_header X-Linked-Etag $linked_etag always;
    }}"""
    results: dict[str, object] = {"size_bytes": size, "hit_size_bytes": hit_size}
    with Nginx(www, extra_http=extra_http, extra_server=extra_server) as nginx:
        endpoint = f"http://127.0.0.1:{nginx.port}"
        url = nginx.url(name)
        commands = download_commands(work, url, endpoint, name, sha)
        rows = {k: Row(k) for k in commands}
        for tool, note in NOTES.items():
            rows[tool].note = note
        for run in range(args.runs):
            for tool, (cmd, env) in commands.items():
                reset_outputs(work)
                sample = run_process(cmd, env)
                rows[tool].samples.append(sample)
                print(f"  run {run + 1}/{args.runs} {tool:24} {sample.wall:6.2f}s", flush=True)
        results["download"] = print_download_table(
            f"Download {args.size_mib} MiB over loopback from nginx, medians of {args.runs} runs",
            list(rows.values()),
            size,
        )

        cdn_url = f"http://127.0.0.1:{nginx.port}/cdn/{name}"
        cdn_cmds = download_commands(work, cdn_url, endpoint, name, sha)
        cdn_rows = {k: Row(k, note=NOTES[k]) for k in CDN_TOOLS}
        for run in range(args.runs):
            for tool in CDN_TOOLS:
                reset_outputs(work)
                sample = run_process(*cdn_cmds[tool])
                cdn_rows[tool].samples.append(sample)
                print(f"  cdn run {run + 1}/{args.runs} {tool:24} {sample.wall:6.2f}s", flush=True)
        results["download_cdn"] = print_download_table(
            f"Download {args.size_mib} MiB from a CDN-like origin limited to "
            f"{CDN_RATE_MB} MB/s per connection, medians of {args.runs} runs",
            list(cdn_rows.values()),
            size,
        )

        print(f"\npopulating caches with the {args.hit_size_mib} MiB file ...", flush=True)
        reset_outputs(work)
        hit_url = nginx.url(hit_name)
        big = download_commands(work, hit_url, endpoint, hit_name, hit_sha)
        big_rows = []
        for tool in ("curl", "modelfetch (default)", "huggingface_hub", "pooch (known_hash)"):
            cmd, env = big[tool]
            row = Row(tool, [run_process(cmd, env)])
            big_rows.append(row)
        results["download_big"] = print_download_table(
            f"Download {args.hit_size_mib} MiB once (peak RSS is the point here)",
            big_rows,
            hit_size,
        )

        print(f"\nCache hit on the verified {args.hit_size_mib} MiB entry (median per call)")
        hits = []
        for tool, (cmd, env, note) in hit_commands(
            work, hit_url, endpoint, hit_name, hit_sha, args.hit_calls
        ).items():
            sample = run_process(cmd, env)
            assert sample.call is not None
            print(f"  {tool:28} {sample.call * 1000:10.2f} ms   verified: {note}")
            hits.append({"tool": tool, "median_ms": sample.call * 1000, "verified": note})
        results["cache_hit"] = hits

    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out_dir / 'latest.json'}")


if __name__ == "__main__":
    main()
