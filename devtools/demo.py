"""The README's demo: a generated GGUF served by nginx on loopback, fetched by the CLI; then
a whole transformers-style repository from a local hub + CDN emulation, published into the
Hugging Face cache and loaded from there by huggingface_hub, offline."""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from devtools.genmodel import write_gguf
from devtools.hub_emulator import HubEmulator
from devtools.nginx import Nginx


def step(title: str) -> None:
    print(f"\n=== {title}", flush=True)


def cli(cache: Path, *args: str, env: dict[str, str] | None = None) -> str:
    cmd = [sys.executable, "-m", "modelfetch", "--cache-dir", str(cache), *args]
    print("$ modelfetch " + " ".join(shlex.quote(a) for a in cmd[3:]), flush=True)
    started = time.perf_counter()
    out = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True, env=env).stdout
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
        whole_repository(work)
    print("\ndemo finished OK")


def safetensors_shard(names: list[str], floats: int, seed: int) -> bytes:
    """A valid safetensors file: a JSON header, then float32 tensors of ``floats`` values."""
    data = np.random.default_rng(seed).standard_normal(floats * len(names), dtype=np.float32)
    size = floats * 4
    header = {n: {"dtype": "F32", "shape": [floats], "data_offsets": [i * size, (i + 1) * size]}
              for i, n in enumerate(names)}  # fmt: skip
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return len(raw).to_bytes(8, "little") + raw + data.tobytes()


def tiny_transformers_repo(shard_mib: int) -> dict[str, bytes]:
    floats = shard_mib * 1024 * 1024 // 4 // 2
    shards = {
        "model-00001-of-00002.safetensors": ["embed.weight", "layers.0.weight"],
        "model-00002-of-00002.safetensors": ["layers.1.weight", "lm_head.weight"],
    }
    files = {name: safetensors_shard(t, floats, i) for i, (name, t) in enumerate(shards.items())}
    weight_map = {t: name for name, tensors in shards.items() for t in tensors}
    total = sum(len(d) for d in files.values())
    files["model.safetensors.index.json"] = json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2
    ).encode()
    files["config.json"] = json.dumps(
        {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 64,
         "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 256}, indent=2
    ).encode()  # fmt: skip
    files["generation_config.json"] = b'{"do_sample": false, "max_new_tokens": 32}\n'
    files["tokenizer.json"] = json.dumps({"model": {"type": "BPE", "vocab": {}}}).encode()
    files["tokenizer_config.json"] = b'{"model_max_length": 2048}\n'
    files["README.md"] = b"# tiny-llama\n\nA demo repository for modelfetch.\n"
    return files


def whole_repository(work: Path) -> None:
    repo = "demo-org/tiny-llama"
    files = tiny_transformers_repo(shard_mib=24)
    hub_cache = work / "hf-home" / "hub"
    with HubEmulator(xet=False) as hub:
        hub.create_repo(repo, files)
        hub.cdn.rate = 40e6  # bytes/s per connection, like a CDN
        step(f"a whole repository ({len(files)} files) from a local hub + CDN emulation "
             f"at {hub.endpoint}: one commit, every file verified, published into the "
             "Hugging Face cache too")  # fmt: skip
        env = {**os.environ, "HF_ENDPOINT": hub.endpoint, "HF_HUB_CACHE": str(hub_cache)}
        env.pop("HF_TOKEN", None)
        out = cli(work / "cache-3", "get", f"hf://{repo}", "--all", "--hf-cache", env=env)
        snapshot_dir = Path(out.strip().splitlines()[-1])
        for path in sorted(p.relative_to(snapshot_dir).as_posix()
                           for p in snapshot_dir.rglob("*") if p.is_symlink()):  # fmt: skip
            print(f"  {path}")
        step("the same command again: every file a verified cache hit, no request")
        before = len(hub.hub.log) + len(hub.cdn.log)
        cli(work / "cache-3", "get", f"hf://{repo}", "--all", "-q", env=env)
        print(f"requests to the hub and CDN: {len(hub.hub.log) + len(hub.cdn.log) - before}")
    step("huggingface_hub, offline (HF_HUB_OFFLINE=1), loads it from the Hugging Face cache")
    code = (
        "import hashlib, json, os\n"
        "from huggingface_hub import hf_hub_download, snapshot_download\n"
        f"root = snapshot_download({repo!r}, local_files_only=True)\n"
        "out = {os.path.relpath(os.path.join(d, n), root): hashlib.sha256(open(os.path.join("
        "d, n), 'rb').read()).hexdigest() for d, _, ns in os.walk(root) for n in ns}\n"
        f"cfg = json.load(open(hf_hub_download({repo!r}, 'config.json')))\n"
        "print(json.dumps({'root': root, 'files': out, 'arch': cfg['architectures']}))\n"
    )
    offline_env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub_cache),
                   "HF_HUB_DISABLE_TELEMETRY": "1"}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], env=offline_env, check=True,
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"snapshot_download(local_files_only=True) -> {loaded['root']}")
    print(f"config.json architectures: {loaded['arch']}")
    same = all(loaded["files"][p] == hashlib.sha256(d).hexdigest() for p, d in files.items())
    print(f"{len(loaded['files'])} files, identical to what the hub serves: {same}")
    if not same or len(loaded["files"]) != len(files):
        raise SystemExit("the Hugging Face cache does not hold the repository")


if __name__ == "__main__":
    main()
