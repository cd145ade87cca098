"""Benchmark modelfetch against its peers, every scenario in one run, all on loopback.

nginx serves generated files (plus the Hugging Face resolve route with the headers
huggingface_hub reads, so hf_hub_download and `hf download` work against it). Every tool
runs as its own process; we record the process's wall time and peak RSS (VmHWM), and Python
tools also report the time spent inside the download call itself. Before each run the
page cache's dirty pages are flushed (`sync`) so no tool pays for the previous tool's
writeback. Medians over --runs; ratios are medians divided by the reference's median.

Scenarios (--scenarios, comma-separated; all by default):
  loopback  1 file from nginx at full loopback speed; reference: curl
  cdn       the same from an origin limiting each connection (a CDN); reference: aria2c
  latency   the CDN origin behind a relay adding a delay before every response (a far CDN),
            compared with the same relay without delay; the relay's own cost is measured
  mirror    N concurrent clients reading a cached file: `modelfetch serve` vs nginx
  hit       a cache hit on a big verified entry, per call, in-process
  cli       `modelfetch get SOURCE` on a hit and `import modelfetch`, as processes

Usage: bash bench/run.sh [--quick] [--scenarios cdn,cli] [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from devtools.nginx import Nginx

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable
BIN = Path(PY).parent
REPO = "bench/model"  # resolve route at full speed
CDN_REPO = "bench/cdn"  # resolve route limited per connection
COMMIT = "0123456789abcdef0123456789abcdef01234567"
SCENARIOS = ("loopback", "cdn", "latency", "mirror", "hit", "cli")
HF_TRANSFER_CHUNK = 10 << 20  # what huggingface_hub passed to hf_transfer


@dataclass
class Tool:
    name: str
    steps: list[list[str]]  # run one after another; wall times add up, peak RSS is the max
    env: dict[str, str] | None = None
    note: str = ""


@dataclass
class Sample:
    wall: float
    call: float | None
    rss_mib: float


@dataclass
class Row:
    name: str
    note: str = ""
    samples: list[Sample] = field(default_factory=list)

    def median(self, attr: str) -> float:
        values = [getattr(s, attr) for s in self.samples if getattr(s, attr) is not None]
        return statistics.median(values) if values else float("nan")

    def peak_rss(self) -> float:
        return max((s.rss_mib for s in self.samples), default=float("nan"))


@dataclass
class Ctx:
    args: argparse.Namespace
    work: Path
    www: Path
    size: int
    name: str
    sha: str
    nginx: Nginx | None = None

    @property
    def endpoint(self) -> str:
        assert self.nginx is not None
        return f"http://127.0.0.1:{self.nginx.port}"


# -- files and processes ------------------------------------------------------------------
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


def _vm_hwm_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return None


def _peak_rss_mib(pid: int, stop: threading.Event, out: list[float]) -> None:
    """Sample VmHWM (the RSS high-water mark, reset at exec) until the process ends.

    wait4's ru_maxrss is no use here: a forked child inherits the parent's RSS as its
    starting maximum, so every tool would look as big as this benchmark process.
    """
    while not stop.is_set():
        value = _vm_hwm_mib(pid)
        if value is not None:
            out.append(value)
        stop.wait(0.005)


def run_process(cmd: list[str], env: dict[str, str] | None = None, flush: bool = True) -> Sample:
    if flush:
        os.sync()
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    stop, peaks = threading.Event(), [0.0]
    sampler = threading.Thread(target=_peak_rss_mib, args=(proc.pid, stop, peaks))
    sampler.start()
    try:
        out, err = proc.communicate(timeout=1800)
    finally:
        wall = time.perf_counter() - started
        stop.set()
        sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)[:200]} failed: {err.decode(errors='replace')[-2000:]}")
    call = None
    for line in out.decode(errors="replace").splitlines():
        if line.startswith("BENCH "):
            call = float(json.loads(line[6:])["seconds"])
    return Sample(wall, call, max(peaks))


def run_tool(tool: Tool) -> Sample:
    """Run the steps in order; only the first is preceded by a `sync` (a later `sync` step
    is part of what is measured)."""
    samples = [run_process(cmd, tool.env, flush=i == 0) for i, cmd in enumerate(tool.steps)]
    calls = [s.call for s in samples if s.call is not None]
    return Sample(
        sum(s.wall for s in samples),
        calls[0] if len(calls) == 1 and len(samples) == 1 else None,
        max(s.rss_mib for s in samples),
    )


def py_tool(code: str) -> list[str]:
    return [PY, "-c", textwrap.dedent(code)]


def timed(code: str) -> list[str]:
    """A Python tool that reports how long ``code`` itself took (BENCH line)."""
    return py_tool(
        "import json, time\nt = time.perf_counter()\n"
        + textwrap.dedent(code).strip()
        + '\nprint("BENCH " + json.dumps({"seconds": time.perf_counter() - t}))\n'
    )


def hf_env(home: Path, endpoint: str, offline: bool = False) -> dict[str, str]:
    env = {**os.environ, "HF_ENDPOINT": endpoint, "HF_HOME": str(home)}
    env["HF_HUB_DISABLE_TELEMETRY"] = "1"
    env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    env["HF_HUB_DISABLE_XET"] = "1"
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return env


def reset_outputs(work: Path) -> None:
    for sub in ("out", "hf", "hfcli", "mf", "curl"):
        shutil.rmtree(work / sub, ignore_errors=True)
        (work / sub).mkdir(parents=True)


# -- the tools ----------------------------------------------------------------------------
def download_tools(ctx: Ctx, url: str, repo: str, endpoint: str) -> dict[str, Tool]:
    """Every downloader, fetching ``url`` (or ``repo``'s file via ``endpoint``) afresh."""
    work, name, sha, n = ctx.work, ctx.name, ctx.sha, ctx.args.connections
    target = work / "curl" / name
    aria2c = [
        "aria2c", "-q", f"-x{n}", f"-s{n}", "-k1M", "--file-allocation=falloc",
        "--allow-overwrite=true", "-d", str(work / "curl"), "-o", name, url,
    ]  # fmt: skip
    curl = ["curl", "-sf", "-o", str(target), url]
    hf = hf_env(work / "hfhome", endpoint)
    tools = [
        Tool("curl", [curl], note="no hash, no fsync"),
        Tool("curl + sync", [curl, ["sync", str(target)]], note="durable, no hash"),
        Tool(
            "curl + sha256sum",
            [curl, ["sha256sum", str(target)]],
            note="verified (2nd read), not durable",
        ),
        Tool(f"aria2c -x{n}", [aria2c], note="no hash, no fsync"),
        Tool(
            f"aria2c -x{n} + sync",
            [aria2c, ["sync", str(target)]],
            note="durable reference, no hash",
        ),
        Tool(
            f"hf_transfer -x{n}",
            [
                timed(f"""
                    import hf_transfer
                    hf_transfer.download({url!r}, {str(target)!r}, max_files={n},
                                         chunk_size={HF_TRANSFER_CHUNK})
                """)
            ],
            note=f"Rust, {HF_TRANSFER_CHUNK >> 20} MiB ranges; no hash, no fsync",
        ),
        Tool(
            "huggingface_hub",
            [
                timed(f"""
                    from huggingface_hub import hf_hub_download
                    hf_hub_download({repo!r}, {name!r}, cache_dir={str(work / "hf")!r})
                """)
            ],
            hf,
            note="hf_hub_download; no hash check",
        ),
        Tool(
            "hf download",
            [[str(BIN / "hf"), "download", repo, name, "--cache-dir", str(work / "hfcli")]],
            hf,
            note="huggingface_hub's CLI; no hash check",
        ),
        Tool(
            "pooch (known_hash)",
            [
                timed(f"""
                    import pooch
                    pooch.retrieve({url!r}, known_hash="sha256:{sha}",
                                   path={str(work / "out")!r}, fname={name!r},
                                   progressbar=False)
                """)
            ],
            note="hash after download (2nd read)",
        ),
        Tool(
            "modelfetch (default)",
            [mf_get(work, url, sha, n, 150.0)],
            note="one stream + O_DIRECT; adds streams if < 150 MB/s",
        ),
        Tool(
            "modelfetch -x1",
            [mf_get(work, url, sha, 1, 150.0)],
            note="SHA-256 inline, O_DIRECT, fsynced, atomic",
        ),
        Tool(
            f"modelfetch -x{n} always",
            [mf_get(work, url, sha, n, None)],
            note=f"{n} streams from the start, SHA-256 in order",
        ),
    ]
    baseline = ctx.args.baseline_src
    if baseline is not None:
        baseline = baseline.resolve()  # the same calls, run by another checkout's code
        env = {**os.environ, "PYTHONPATH": str(baseline)}
        tools += [
            Tool(f"{t.name} {BASELINE}", [with_origin_check(t.steps[0], baseline)], env, "")
            for t in tools
            if t.name.startswith("modelfetch")
        ]
    return {t.name: t for t in tools}


BASELINE = "[baseline]"
NAME_WIDTH = 37  # "modelfetch (default) [baseline]" and the like


def with_origin_check(cmd: list[str], src: Path) -> list[str]:
    """``cmd`` (a ``python -c`` tool) failing unless modelfetch is imported from ``src``."""
    check = f"\nimport modelfetch\nassert modelfetch.__file__.startswith({str(src)!r})\n"
    return [*cmd[:-1], cmd[-1] + check]


def mf_get(
    work: Path, url: str, sha: str, connections: int, parallel_below: float | None
) -> list[str]:
    return timed(f"""
        from modelfetch import ensure
        ensure({url!r}, cache_dir={str(work / "mf")!r}, sha256={sha!r},
               connections={connections}, parallel_below_mbps={parallel_below!r})
    """)


def pick(tools: dict[str, Tool], names: list[str], only: list[str] | None) -> dict[str, Tool]:
    """``names`` (each followed by its --baseline-src twin, if any), filtered by --tools."""
    chosen = {}
    for k in names:
        chosen[k] = tools[k]
        if f"{k} {BASELINE}" in tools:
            chosen[f"{k} {BASELINE}"] = tools[f"{k} {BASELINE}"]
    if only:
        chosen = {k: v for k, v in chosen.items() if any(o.lower() in k.lower() for o in only)}
    return chosen


def measure(
    tools: dict[str, Tool], runs: int, label: str, before: Callable[[], None]
) -> dict[str, Row]:
    """Every tool once per round, rounds repeated: drift hits all tools alike."""
    rows = {name: Row(name, tool.note) for name, tool in tools.items()}
    for run in range(runs):
        for name, tool in tools.items():
            before()
            sample = run_tool(tool)
            rows[name].samples.append(sample)
            print(f"  {label} run {run + 1}/{runs} {name:38} {sample.wall:7.2f}s", flush=True)
    return rows


# -- printing -----------------------------------------------------------------------------
def print_download_table(
    title: str, rows: list[Row], size: int, refs: list[str]
) -> list[dict[str, object]]:
    ref_walls = {r: next((x.median("wall") for x in rows if x.name == r), None) for r in refs}
    ref_walls = {k: v for k, v in ref_walls.items() if v is not None}
    print(f"\n{title}")
    widths = {r: max(8, len(r) + 3) for r in ref_walls}
    head = "".join(f" {'vs ' + r:>{widths[r]}}" for r in ref_walls)
    print(
        f"{'tool':{NAME_WIDTH}} {'median wall s':>13} {'in-call s':>10} {'MB/s':>7}{head} "
        f"{'peak RSS MiB':>13}  note"
    )
    report = []
    for row in rows:
        wall, call = row.median("wall"), row.median("call")
        ratios = {r: w / wall for r, w in ref_walls.items()}
        call_text = f"{call:10.2f}" if call == call else f"{'-':>10}"
        ratio_text = "".join(f" {ratio:{widths[r] - 1}.2f}x" for r, ratio in ratios.items())
        print(
            f"{row.name:{NAME_WIDTH}} {wall:13.2f} {call_text} {size / wall / 1e6:7.0f}"
            f"{ratio_text} {row.peak_rss():13.0f}  {row.note}"
        )
        report.append(
            {"tool": row.name, "median_wall_s": wall, "median_call_s": call,
             "mb_per_s": size / wall / 1e6, "ratios": ratios, "peak_rss_mib": row.peak_rss(),
             "runs": [s.wall for s in row.samples], "note": row.note}
        )  # fmt: skip
    return report


# -- scenarios ----------------------------------------------------------------------------
def scenario_loopback(ctx: Ctx) -> object:
    n = ctx.args.connections
    names = [
        "curl", "curl + sync", "curl + sha256sum", f"aria2c -x{n}", f"aria2c -x{n} + sync",
        f"hf_transfer -x{n}", "huggingface_hub", "hf download", "pooch (known_hash)",
        "modelfetch (default)", "modelfetch -x1", f"modelfetch -x{n} always",
    ]  # fmt: skip
    assert ctx.nginx is not None
    tools = download_tools(ctx, ctx.nginx.url(ctx.name), REPO, ctx.endpoint)
    tools = pick(tools, names, ctx.args.tools)
    rows = measure(tools, ctx.args.runs, "loopback", lambda: reset_outputs(ctx.work))
    return print_download_table(
        f"Download {ctx.args.size_mib} MiB over loopback from nginx, medians of "
        f"{ctx.args.runs} runs (ratio > 1: faster than the reference)",
        list(rows.values()),
        ctx.size,
        ["curl"],
    )


def cdn_names(n: int) -> list[str]:
    return [
        "curl", f"aria2c -x{n}", f"aria2c -x{n} + sync", f"hf_transfer -x{n}",
        "modelfetch (default)", f"modelfetch -x{n} always",
    ]  # fmt: skip


def scenario_cdn(ctx: Ctx) -> object:
    n = ctx.args.connections
    url = f"{ctx.endpoint}/cdn/{ctx.name}"
    tools = pick(download_tools(ctx, url, CDN_REPO, ctx.endpoint), cdn_names(n), ctx.args.tools)
    rows = measure(tools, ctx.args.runs, "cdn", lambda: reset_outputs(ctx.work))
    return print_download_table(
        f"Download {ctx.args.size_mib} MiB from a CDN-like origin limited to "
        f"{ctx.args.cdn_rate_mb} MB/s per connection, medians of {ctx.args.runs} runs",
        list(rows.values()),
        ctx.size,
        [f"aria2c -x{n}", f"aria2c -x{n} + sync", f"hf_transfer -x{n}"],
    )


@contextmanager
def latency_relay(upstream_port: int, delay_ms: float) -> Iterator[int]:
    proc = subprocess.Popen(
        [PY, "-m", "devtools.latency_proxy", "--upstream-port", str(upstream_port),
         "--delay-ms", str(delay_ms), "--max-seconds", "7200"],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            raise RuntimeError("the latency relay did not start")
        yield int(line.split()[1])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scenario_latency(ctx: Ctx) -> object:
    """Each tool through the relay with and without the delay, interleaved."""
    args, n = ctx.args, ctx.args.connections
    path = f"/cdn/{ctx.name}" if args.latency_origin == "cdn" else f"/{ctx.name}"
    assert ctx.nginx is not None
    with (
        latency_relay(ctx.nginx.port, 0) as near,
        latency_relay(ctx.nginx.port, args.latency_ms) as far,
    ):
        # Is the relay itself a bottleneck? The fastest peer on the same path, straight to
        # nginx and through the relay without delay.
        check = {
            label: download_tools(ctx, url, REPO, ctx.endpoint)[f"aria2c -x{n}"]
            for label, url in (
                ("direct", f"{ctx.endpoint}{path}"),
                ("relay", f"http://127.0.0.1:{near}{path}"),
            )
        }
        cal = measure(check, args.runs, "relay check", lambda: reset_outputs(ctx.work))
        names = [f for f in cdn_names(n) if "+ sync" not in f]
        tools = {}
        for label, port in (("0 ms", near), (f"{args.latency_ms:g} ms", far)):
            url = f"http://127.0.0.1:{port}{path}"
            endpoint = f"http://127.0.0.1:{port}"
            for name, tool in pick(
                download_tools(ctx, url, CDN_REPO, endpoint), names, args.tools
            ).items():
                tools[f"{name} @ {label}"] = tool
        rows = measure(tools, args.runs, "latency", lambda: reset_outputs(ctx.work))
    origin = (
        f"the CDN-like origin ({args.cdn_rate_mb} MB/s per connection)"
        if args.latency_origin == "cdn"
        else "nginx at full speed"
    )
    print(
        f"\nDownload {args.size_mib} MiB from {origin} through a relay that delays every "
        f"request by {args.latency_ms:g} ms, medians of {args.runs} runs"
    )
    direct, relayed = cal["direct"].median("wall"), cal["relay"].median("wall")
    print(
        f"  relay check, aria2c -x{n}: straight to nginx {ctx.size / direct / 1e6:.0f} MB/s, "
        f"through the relay (0 ms) {ctx.size / relayed / 1e6:.0f} MB/s"
    )
    print(f"{'tool':{NAME_WIDTH}} {'0 ms s':>8} {'delayed s':>10} {'kept':>7} {'peak RSS MiB':>13}")
    report = []
    for name in dict.fromkeys(k.rsplit(" @ ", 1)[0] for k in rows):
        near_row, far_row = rows[f"{name} @ 0 ms"], rows[f"{name} @ {args.latency_ms:g} ms"]
        w0, w1 = near_row.median("wall"), far_row.median("wall")
        rss = max(near_row.peak_rss(), far_row.peak_rss())
        print(f"{name:{NAME_WIDTH}} {w0:8.2f} {w1:10.2f} {w0 / w1:6.2f}x {rss:13.0f}")
        report.append(
            {"tool": name, "no_delay_wall_s": w0, "delayed_wall_s": w1, "kept": w0 / w1,
             "peak_rss_mib": rss, "runs_no_delay": [s.wall for s in near_row.samples],
             "runs_delayed": [s.wall for s in far_row.samples]}
        )  # fmt: skip
    return {
        "delay_ms": args.latency_ms,
        "origin": args.latency_origin,
        "relay_check_mb_per_s": {
            "direct": ctx.size / direct / 1e6,
            "through_relay": ctx.size / relayed / 1e6,
        },
        "tools": report,
    }


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _concurrent_reads(url: str, clients: int, size: int) -> float:
    """Wall time for ``clients`` curl processes to read ``url`` at once (all checked)."""
    cmd = ["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}", url]
    started = time.perf_counter()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE) for _ in range(clients)]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    wall = time.perf_counter() - started
    for p, out in zip(procs, outs, strict=True):
        if p.returncode != 0 or int(out or 0) != size:
            raise RuntimeError(f"a client of {url} failed (exit {p.returncode}, {out!r} bytes)")
    return wall


@contextmanager
def mirror_server(cache: Path, log: Path) -> Iterator[tuple[str, int]]:
    """`modelfetch serve --offline` on a free port, as users run it."""
    with open(log, "w") as err:
        proc = subprocess.Popen(
            [str(BIN / "modelfetch"), "--cache-dir", str(cache), "serve", "--port", "0",
             "--offline"],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip
    try:
        url = None
        deadline = time.monotonic() + 30
        while url is None and time.monotonic() < deadline and proc.poll() is None:
            found = re.search(r"mirror on (http://\S+)", log.read_text())
            url = found.group(1) if found else None
            time.sleep(0.05)
        if url is None:
            raise RuntimeError(f"modelfetch serve did not start: {log.read_text()[-500:]}")
        yield url, proc.pid
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def scenario_mirror(ctx: Ctx) -> object:
    args = ctx.args
    cache = ctx.work / "mirror-cache"
    shutil.rmtree(cache, ignore_errors=True)
    fill = timed(f"""
        from modelfetch import ensure
        e = ensure("hf://{REPO}/{ctx.name}", cache_dir={str(cache)!r},
                   hf_endpoint={ctx.endpoint!r}, sha256={ctx.sha!r})
        print("PATH " + str(e.path))
    """)
    done = subprocess.run(fill, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0:
        raise RuntimeError(f"filling the mirror's cache failed: {done.stderr[-2000:]}")
    entry = Path(next(x[5:] for x in done.stdout.splitlines() if x.startswith("PATH ")))
    total = args.clients * ctx.size
    rows: dict[str, list[float]] = {"nginx": [], "modelfetch serve": []}
    rss: dict[str, float] = {}
    # nginx serves the very file the mirror serves (its entry directory as docroot).
    serve_log = ctx.work / "serve.log"
    with Nginx(entry.parent) as same, mirror_server(cache, serve_log) as (mirror_url, mirror_pid):
        urls = {
            "nginx": same.url(entry.name),
            "modelfetch serve": f"{mirror_url}/{REPO}/resolve/main/{ctx.name}",
        }
        for url in urls.values():
            _concurrent_reads(url, 1, ctx.size)  # warm the page cache and both servers
        for run in range(args.runs):
            for label, url in urls.items():
                wall = _concurrent_reads(url, args.clients, ctx.size)
                rows[label].append(wall)
                print(
                    f"  mirror run {run + 1}/{args.runs} {label:18} {wall:6.2f}s "
                    f"{total / wall / 1e6:6.0f} MB/s",
                    flush=True,
                )
        assert same.proc is not None
        workers = _children(same.proc.pid) or [same.proc.pid]
        rss["nginx"] = max(_vm_hwm_mib(p) or 0.0 for p in workers)
        rss["modelfetch serve"] = _vm_hwm_mib(mirror_pid) or float("nan")
    nginx_rate = total / statistics.median(rows["nginx"]) / 1e6
    print(
        f"\n{args.clients} clients reading the same cached {args.size_mib} MiB file at once "
        f"(curl to /dev/null), medians of {args.runs} runs"
    )
    print(
        f"{'server':18} {'median wall s':>13} {'aggregate MB/s':>15} {'vs nginx':>9} {'RSS MiB':>8}"
    )
    report = []
    for label, walls in rows.items():
        wall = statistics.median(walls)
        rate = total / wall / 1e6
        print(f"{label:18} {wall:13.2f} {rate:15.0f} {rate / nginx_rate:8.2f}x {rss[label]:8.0f}")
        report.append(
            {"server": label, "median_wall_s": wall, "aggregate_mb_per_s": rate,
             "ratio_vs_nginx": rate / nginx_rate, "peak_rss_mib": rss[label], "runs": walls}
        )  # fmt: skip
    return {"clients": args.clients, "servers": report}


def scenario_hit(ctx: Ctx) -> object:
    """Populate every cache with a big file, then time a hit per call, in-process."""
    args = ctx.args
    hit_size = args.hit_size_mib << 20
    hit_name = f"model-{args.hit_size_mib}m.gguf"
    hit_sha = make_file(ctx.www / hit_name, hit_size, seed=2)
    print(f"\npopulating caches with the {args.hit_size_mib} MiB file ...", flush=True)
    reset_outputs(ctx.work)
    big_ctx = Ctx(args, ctx.work, ctx.www, hit_size, hit_name, hit_sha, ctx.nginx)
    assert ctx.nginx is not None
    tools = download_tools(big_ctx, ctx.nginx.url(hit_name), REPO, ctx.endpoint)
    names = ["curl", "modelfetch (default)", "huggingface_hub", "pooch (known_hash)"]
    rows = [Row(k, tools[k].note, [run_tool(tools[k])]) for k in names]
    download = print_download_table(
        f"Download {args.hit_size_mib} MiB once (peak RSS is the point here)",
        rows,
        hit_size,
        ["curl"],
    )
    print(f"\nCache hit on the verified {args.hit_size_mib} MiB entry (median per call)")
    hits = []
    for tool, (cmd, env, note) in hit_commands(big_ctx, args.hit_calls).items():
        sample = run_process(cmd, env)
        assert sample.call is not None
        print(f"  {tool:28} {sample.call * 1000:10.2f} ms   verified: {note}")
        hits.append({"tool": tool, "median_ms": sample.call * 1000, "verified": note})
    return {"download_once": download, "per_call": hits}


def hit_commands(ctx: Ctx, calls: int) -> dict[str, tuple[list[str], dict[str, str] | None, str]]:
    work, name, sha = ctx.work, ctx.name, ctx.sha
    assert ctx.nginx is not None
    url = ctx.nginx.url(name)

    def script(setup: str, call: str, n: int = calls) -> list[str]:
        return py_tool(
            "import json, time\n"
            + textwrap.dedent(setup)
            + f"\ntimes = []\nfor _ in range({n}):\n"
            + f"    t = time.perf_counter(); {call}; times.append(time.perf_counter() - t)\n"
            + "times.sort()\n"
            + 'print("BENCH " + json.dumps({"seconds": times[len(times) // 2]}))\n'
        )

    mf = str(work / "mf")
    hf_call = f"hf_hub_download({REPO!r}, {name!r}, cache_dir={str(work / 'hf')!r})"
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
            script("from huggingface_hub import hf_hub_download", hf_call),
            hf_env(work / "hfhome", ctx.endpoint, offline=True),
            "no: returns the path unchecked",
        ),
        "huggingface_hub (online)": (
            script("from huggingface_hub import hf_hub_download", hf_call),
            hf_env(work / "hfhome", ctx.endpoint),
            "no: a HEAD request per call, file unchecked",
        ),
    }


def scenario_cli(ctx: Ctx) -> object:
    """Whole processes, as scripts run them: wall time per call, median of --cli-calls."""
    args, work = ctx.args, ctx.work
    import modelfetch

    # PYTHONDONTWRITEBYTECODE may be set: make sure the bytecode cache exists, as it does
    # after any pip install.
    subprocess.run(
        [PY, "-m", "compileall", "-q", str(Path(modelfetch.__file__).parent)], check=True
    )
    cache, hfcache = work / "cli-cache", work / "cli-hf"
    for d in (cache, hfcache):
        shutil.rmtree(d, ignore_errors=True)
    assert ctx.nginx is not None
    url = ctx.nginx.url(ctx.name)
    hf = hf_env(work / "hfhome", ctx.endpoint)
    get = [str(BIN / "modelfetch"), "--cache-dir", str(cache), "get", url]
    hf_get = [str(BIN / "hf"), "download", REPO, ctx.name, "--cache-dir", str(hfcache)]
    run_process(get)  # populate both caches (a download, not measured)
    run_process(hf_get, hf)
    tools = {
        "python -c pass": Tool("", [[PY, "-c", "pass"]], note="the interpreter alone"),
        "python -c 'import modelfetch'": Tool(
            "", [[PY, "-c", "import modelfetch"]], note="interpreter + import"
        ),
        "modelfetch get URL (hit)": Tool("", [get], note="target <= 60 ms wall"),
        "modelfetch get --json (hit)": Tool("", [[*get, "--json"]]),
        "hf download (hit, online)": Tool("", [hf_get], hf, note="one HEAD request, unverified"),
        "hf download (hit, offline)": Tool(
            "", [hf_get], hf_env(work / "hfhome", ctx.endpoint, offline=True), note="unverified"
        ),
    }
    walls: dict[str, list[float]] = {k: [] for k in tools}
    rss: dict[str, float] = {}
    for _ in range(args.cli_calls):
        for label, tool in tools.items():
            sample = run_tool(tool)
            walls[label].append(sample.wall)
            rss[label] = max(rss.get(label, 0.0), sample.rss_mib)
    import_times = []
    code = "import time; t = time.perf_counter(); import modelfetch; print(time.perf_counter() - t)"
    for _ in range(args.cli_calls):
        out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True)
        import_times.append(float(out.stdout))
    tree = subprocess.run(
        [PY, "-X", "importtime", "-c", "import modelfetch"], capture_output=True, text=True
    ).stderr
    cumulative = [int(x.split("|")[1]) for x in tree.splitlines() if x.endswith("| modelfetch")]
    print(
        f"\nCommand-line cache hit and import cost, whole processes, medians of "
        f"{args.cli_calls} calls (bytecode cache present)"
    )
    print(f"{'command':32} {'median ms':>10} {'min ms':>8} {'peak RSS MiB':>13}  note")
    report = []
    for label, values in walls.items():
        med = statistics.median(values) * 1000
        fastest = min(values) * 1000
        print(f"{label:32} {med:10.1f} {fastest:8.1f} {rss[label]:13.0f}  {tools[label].note}")
        report.append(
            {"command": label, "median_ms": med, "min_ms": min(values) * 1000,
             "peak_rss_mib": rss[label], "runs_ms": [v * 1000 for v in values]}
        )  # fmt: skip
    inside = statistics.median(import_times) * 1000
    fastest = min(import_times) * 1000
    label = "import modelfetch, in-process"
    print(f"{label:32} {inside:10.1f} {fastest:8.1f} {'':13}  target <= 40 ms")
    if cumulative:
        print(f"{'  (-X importtime, cumulative)':32} {cumulative[0] / 1000:10.1f}")
    return {
        "processes": report,
        "import_in_process_median_ms": inside,
        "importtime_cumulative_ms": cumulative[0] / 1000 if cumulative else None,
    }


# -- main ---------------------------------------------------------------------------------
def nginx_config(ctx: Ctx, rate_mb: int) -> tuple[str, str]:
    """The CDN path and two Hugging Face resolve routes (full speed and CDN speed), at any
    revision (clients ask for main, then for the commit it resolved to); nginx sends
    X-Linked-Etag (the SHA-256) for the files this run generated."""
    files = {ctx.name: ctx.sha}
    hit_sha = ctx.www / f"model-{ctx.args.hit_size_mib}m.gguf.sha256"
    if hit_sha.exists():
        files[hit_sha.name.removesuffix(".sha256")] = hit_sha.read_text().strip()
    mapping = "\n".join(
        f'        "~/resolve/[^/]+/{re.escape(n)}$" "\\"{s}\\"";' for n, s in files.items()
    )
    extra_http = f"""
    map $uri $linked_etag {{
        default "";
{mapping}
    }}"""
    hub_headers = f"""
        add_header X-Repo-Commit {COMMIT} always;
        add_header X-Linked-Etag $linked_etag always;"""
    extra_server = f"""
    location /cdn/ {{
        alias {ctx.www}/;
        limit_rate {rate_mb}m;
    }}
    location ~ ^/{REPO}/resolve/[^/]+/(?<file>[^/]+)$ {{
        alias {ctx.www}/$file;{hub_headers}
    }}
    location ~ ^/{CDN_REPO}/resolve/[^/]+/(?<file>[^/]+)$ {{
        alias {ctx.www}/$file;
        limit_rate {rate_mb}m;{hub_headers}
    }}"""
    return extra_http, extra_server


def machine_info() -> dict[str, object]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
        except OSError:
            return "missing"
        return out.splitlines()[0] if out else ""

    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for dist in ("modelfetch", "huggingface_hub", "hf_transfer", "pooch"):
        try:
            versions[dist] = version(dist)
        except PackageNotFoundError:
            versions[dist] = "missing"
    versions["curl"] = first_line(["curl", "--version"])
    versions["aria2c"] = first_line(["aria2c", "--version"])
    return {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": versions,
    }


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB files, 1 run, fewer calls")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS), help="comma-separated")
    parser.add_argument(
        "--tools", help="download scenarios: only tools whose name contains one of these (a,b)"
    )
    parser.add_argument("--size-mib", type=int)
    parser.add_argument("--hit-size-mib", type=int)
    parser.add_argument("--runs", type=int)
    parser.add_argument("--hit-calls", type=int)
    parser.add_argument("--cli-calls", type=int)
    parser.add_argument("--connections", type=int, default=8, help="for every multi-stream tool")
    parser.add_argument("--cdn-rate-mb", type=int, default=60, help="per-connection limit")
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--latency-origin", choices=("cdn", "plain"), default="cdn")
    parser.add_argument("--clients", type=int, default=8, help="mirror scenario")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfetch-bench"))
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="also run every modelfetch download with the package found in this directory "
        "(another checkout's src/, e.g. from `git archive main src`), interleaved, "
        'as "... [baseline]"',
    )
    args = parser.parse_args()
    quick = {"size_mib": 64, "hit_size_mib": 64, "runs": 1, "hit_calls": 10, "cli_calls": 10}
    full = {"size_mib": 1024, "hit_size_mib": 4096, "runs": 3, "hit_calls": 50, "cli_calls": 30}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(args.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(sorted(unknown))}; known: {SCENARIOS}")
    args.tools = [t.strip() for t in args.tools.split(",")] if args.tools else None
    return args


def main() -> None:
    args = parse_args()
    work = args.workdir
    www = work / "www"
    www.mkdir(parents=True, exist_ok=True)
    size = args.size_mib << 20
    name = f"model-{args.size_mib}m.gguf"
    print(f"generating {args.size_mib} MiB file in {www} ...", flush=True)
    ctx = Ctx(args, work, www, size, name, make_file(www / name, size, seed=1))
    if "hit" in args.scenarios:
        make_file(www / f"model-{args.hit_size_mib}m.gguf", args.hit_size_mib << 20, seed=2)
    info = machine_info()
    load = os.getloadavg()[0]
    if load > 0.5 * (os.cpu_count() or 1):
        print(f"note: load average {load:.1f} on {os.cpu_count()} CPUs: numbers are indicative")
    results: dict[str, object] = {"machine": info, "args": {**vars(args), "workdir": str(work)}}
    results["size_bytes"] = size
    runners = {
        "loopback": scenario_loopback,
        "cdn": scenario_cdn,
        "latency": scenario_latency,
        "mirror": scenario_mirror,
        "hit": scenario_hit,
        "cli": scenario_cli,
    }
    started = time.monotonic()
    extra_http, extra_server = nginx_config(ctx, args.cdn_rate_mb)
    with Nginx(www, extra_http=extra_http, extra_server=extra_server) as nginx:
        ctx.nginx = nginx
        for scenario in args.scenarios:
            print(f"\n== {scenario} ==", flush=True)
            results[scenario] = runners[scenario](ctx)
    results["seconds"] = time.monotonic() - started
    info["loadavg_at_end"] = os.getloadavg()
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / "latest.json").write_text(json.dumps(results, indent=2, default=str))
    print(f"\nwrote {out_dir / 'latest.json'} ({results['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
