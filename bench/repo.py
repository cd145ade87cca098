"""Benchmark a whole repository: modelfetch vs snapshot_download vs aria2c -i, in one run.

The repository is what a transformers model looks like: ``--shards`` safetensors shards of
``--shard-mib`` MiB (in LFS) plus ``--small`` small git-stored files (configs, tokenizer).
nginx on loopback plays the hub and its CDN, with the real protocol: the revision and tree
API (static JSON), ``/resolve/<commit>/<file>`` answering a 302 to the CDN with
``X-Linked-Etag``/``X-Linked-Size`` for LFS files and a relative 307 to
``/api/resolve-cache/...`` (``ETag`` = git blob SHA-1) for git files, and a CDN location
limited to ``--rate-mb`` MB/s per connection (nginx ``limit_rate``), like a real CDN.

Tools, each its own process, with ``sync`` before every run:
* modelfetch: ``modelfetch get hf://bench/repo --all`` (every file verified: SHA-256 for
  LFS, git blob SHA-1 for git files; fsynced, atomic);
* huggingface_hub ``snapshot_download(max_workers=8)`` (one connection per file);
* ``aria2c -i`` (``-j8 -x4 -s4``) with every file's ``checksum=sha-256=`` in its input file.

Usage: bash bench/run.sh repo [--shards 16] [--shard-mib 64] [--small 24] [--rate-mb 40]
                              [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from bench.run import ROOT, Sample, hf_env, make_file, py_tool, run_process
from devtools.nginx import Nginx, free_port

REPO = "bench/repo"
COMMIT = "c0ffee0123456789abcdef0123456789abcdef01"


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\x00" % len(data) + data, usedforsecurity=False).hexdigest()


def lfs_pointer_sha1(sha256: str, size: int) -> str:
    pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{sha256}\nsize {size}\n"
    return git_blob_sha1(pointer.encode())


def make_repo(files_dir: Path, shards: int, shard_mib: int, small: int) -> list[dict[str, object]]:
    """Write the repository's files; return its tree listing (the hub's tree API items)."""
    files_dir.mkdir(parents=True, exist_ok=True)
    items: list[dict[str, object]] = []
    for i in range(1, shards + 1):
        name = f"model-{i:05d}-of-{shards:05d}.safetensors"
        size = shard_mib << 20
        sha = make_file(files_dir / name, size, seed=100 + i)
        lfs = {"oid": sha, "size": size, "pointerSize": 134}
        items.append({"type": "file", "oid": lfs_pointer_sha1(sha, size), "size": size,
                      "path": name, "lfs": lfs})  # fmt: skip
    weight_map = {f"layer.{i}.weight": str(items[i]["path"]) for i in range(shards)}
    smalls = {"model.safetensors.index.json": json.dumps({"weight_map": weight_map}).encode()}
    for i in range(small - 1):
        smalls[f"extra/file-{i:02d}.json"] = json.dumps({"i": i, "pad": "x" * (i * 997)}).encode()
    for name, data in smalls.items():
        (files_dir / name).parent.mkdir(parents=True, exist_ok=True)
        (files_dir / name).write_bytes(data)
        items.append({"type": "file", "oid": git_blob_sha1(data), "size": len(data), "path": name})
    return items


def nginx_config(
    www: Path, items: list[dict[str, object]], rate_mb: int, cdn: str
) -> tuple[str, str]:
    """The hub routes as nginx locations (one per file, generated), and the CDN as a server
    of its own on ``cdn`` (another host: clients treat a same-host redirect differently)."""
    files = www / "files"
    cdn_server = (
        f"server {{ listen {cdn}; location /cdn/ {{ alias {files}/; limit_rate {rate_mb}m; }} }}"
    )
    server = [
        "absolute_redirect off;",  # the hub's 307 for git files is relative
        f"location ~ ^/api/models/{REPO}/revision/ {{ default_type application/json; "
        f"add_header X-Repo-Commit {COMMIT} always; try_files /api/info.json =404; }}",
        f"location ~ ^/api/models/{REPO}/tree/ {{ default_type application/json; "
        "try_files /api/tree.json =404; }",
    ]
    for item in items:
        path = str(item["path"])
        resolve = f"/{REPO}/resolve/{COMMIT}/{path}"
        lfs = item.get("lfs")
        if isinstance(lfs, dict):
            server.append(
                f"location = {resolve} {{ add_header X-Repo-Commit {COMMIT} always; "
                f"add_header X-Linked-Etag '\"{lfs['oid']}\"' always; "
                f"add_header X-Linked-Size {item['size']} always; "
                f"return 302 http://{cdn}/cdn/{path}; }}"
            )
        else:
            cached = f"/api/resolve-cache/models/{REPO}/{COMMIT}/{path}"
            server.append(
                f"location = {resolve} {{ add_header X-Repo-Commit {COMMIT} always; "
                f"return 307 {cached}; }}"
            )
            server.append(
                f"location = {cached} {{ etag off; add_header ETag '\"{item['oid']}\"' always; "
                f"add_header X-Repo-Commit {COMMIT} always; alias {files}/{path}; }}"
            )
    return cdn_server, "\n        ".join(server)


def commands(
    work: Path, endpoint: str, items: list[dict[str, object]], www: Path
) -> dict[str, tuple[list[str], dict[str, str] | None]]:
    mf_env = {**os.environ, "HF_ENDPOINT": endpoint, "MODELFETCH_HF_CACHE": "0"}
    mf_env.pop("HF_TOKEN", None)
    aria_input = work / "aria2-input.txt"
    lines = []
    for item in items:
        path = str(item["path"])
        data_sha = (
            item["lfs"]["oid"]  # type: ignore[index]
            if isinstance(item.get("lfs"), dict)
            else hashlib.sha256((www / "files" / path).read_bytes()).hexdigest()
        )
        lines += [f"{endpoint}/{REPO}/resolve/{COMMIT}/{path}", f"  out={path}",
                  f"  checksum=sha-256={data_sha}"]  # fmt: skip
    aria_input.write_text("\n".join(lines) + "\n")
    return {
        "modelfetch": (
            [
                sys.executable,
                "-m",
                "modelfetch",
                "--cache-dir",
                str(work / "mf"),
                "get",
                f"hf://{REPO}",
                "--all",
                "-q",
            ],
            mf_env,
        ),
        "snapshot_download(max_workers=8)": (
            py_tool(f"""
                import json, time
                from huggingface_hub import snapshot_download
                t = time.perf_counter()
                snapshot_download({REPO!r}, cache_dir={str(work / "hf")!r}, max_workers=8)
                print("BENCH " + json.dumps({{"seconds": time.perf_counter() - t}}))
            """),
            hf_env(work / "hfhome", endpoint),
        ),
        "aria2c -i -j8 -x4": (
            [
                "aria2c",
                "-q",
                "-i",
                str(aria_input),
                "-j8",
                "-x4",
                "-s4",
                "-k1M",
                "--file-allocation=falloc",
                "--allow-overwrite=true",
                "-d",
                str(work / "aria2"),
            ],
            None,
        ),
    }


NOTES = {
    "modelfetch": "every file verified (SHA-256 / git SHA-1), fsynced, atomic",
    "snapshot_download(max_workers=8)": "one connection per file, not verified",
    "aria2c -i -j8 -x4": "sha-256 checked after download, not fsynced",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mib", type=int, default=64)
    parser.add_argument("--small", type=int, default=24)
    parser.add_argument("--rate-mb", type=int, default=40, help="MB/s per CDN connection")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/modelfetch-bench-repo"))
    args = parser.parse_args()

    work, www = args.workdir, args.workdir / "www"
    print(f"generating {args.shards} x {args.shard_mib} MiB + {args.small} small files ...")
    items = make_repo(www / "files", args.shards, args.shard_mib, args.small)
    (www / "api").mkdir(parents=True, exist_ok=True)
    (www / "api" / "tree.json").write_text(json.dumps(items))
    info = {"id": REPO, "modelId": REPO, "sha": COMMIT,
            "siblings": [{"rfilename": i["path"]} for i in items]}  # fmt: skip
    (www / "api" / "info.json").write_text(json.dumps(info))
    total = sum(int(str(i["size"])) for i in items)
    cdn = f"127.0.0.2:{free_port()}"
    extra_http, extra_server = nginx_config(www, items, args.rate_mb, cdn)
    results: dict[str, object] = {"bytes": total, "files": len(items), "rate_mb": args.rate_mb}
    with Nginx(www, extra_http=extra_http, extra_server=extra_server) as nginx:
        endpoint = f"http://127.0.0.1:{nginx.port}"
        cmds = commands(work, endpoint, items, www)
        samples: dict[str, list[Sample]] = {name: [] for name in cmds}
        for run in range(args.runs):
            for name, (cmd, env) in cmds.items():
                for sub in ("mf", "hf", "hfhome", "aria2"):
                    shutil.rmtree(work / sub, ignore_errors=True)
                sample = run_process(cmd, env)
                samples[name].append(sample)
                print(f"  run {run + 1}/{args.runs} {name:34} {sample.wall:6.2f}s", flush=True)
    medians = {name: statistics.median(s.wall for s in runs) for name, runs in samples.items()}
    print(
        f"\nWhole repository: {args.shards} x {args.shard_mib} MiB + {args.small} small files "
        f"({total / 2**20:.0f} MiB), CDN limited to {args.rate_mb} MB/s per connection, "
        f"medians of {args.runs} runs"
    )
    base = medians["modelfetch"]
    print(f"{'tool':34} {'median s':>9} {'MB/s':>7} {'modelfetch is':>14} {'peak RSS':>9}  note")
    rows = []
    for name, wall in medians.items():
        rss = max(s.rss_mib for s in samples[name])
        print(f"{name:34} {wall:9.2f} {total / wall / 1e6:7.0f} {wall / base:13.2f}x "
              f"{rss:8.0f}M  {NOTES[name]}")  # fmt: skip
        rows.append({"tool": name, "median_wall_s": wall, "speedup_of_modelfetch": wall / base,
                     "peak_rss_mib": rss, "runs": [s.wall for s in samples[name]]})  # fmt: skip
    results["tools"] = rows
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "repo-latest.json").write_text(json.dumps(results, indent=2))
    print(f"\nwrote {out / 'repo-latest.json'}")


if __name__ == "__main__":
    main()
