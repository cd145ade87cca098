"""Use an installed modelfetch the way a user would: version, import, one real download.

scripts/check_wheel.sh copies this file into a temporary directory outside the checkout
and runs it there with ``python -I`` from a fresh venv holding only the wheel and its
dependencies, so nothing can come from the source tree. Standard library only. Every
step prints one line; the first failure exits with status 1.

    python -I wheel_smoke.py --version 0.2.0
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.resources
import os
import pkgutil
import subprocess
import sys
import tempfile
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

PACKAGE = "modelfetch"
TIMEOUT = 120  # seconds for any one command: generous on a loaded 2-core machine
MODEL_BYTES = 3 * 1024 * 1024 + 12345  # small, and not a multiple of any buffer size


class CheckFailed(Exception):
    pass


def ok(message: str) -> None:
    print(f"wheel_smoke: ok: {message}", flush=True)


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def run(argv: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=TIMEOUT, env=env, check=False
        )
    except subprocess.TimeoutExpired:
        raise CheckFailed(f"{' '.join(argv)} did not finish within {TIMEOUT} s") from None
    except OSError as exc:
        raise CheckFailed(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        raise CheckFailed(
            f"{' '.join(argv)} exited {done.returncode}\nstdout: {done.stdout}\n"
            f"stderr: {done.stderr}"
        )
    return done


def check_installed_copy() -> Any:
    """The package must come from the venv's site-packages, not from any checkout."""
    module = importlib.import_module(PACKAGE)
    location = Path(module.__file__ or "").resolve()
    site = [Path(p).resolve() for p in sys.path if p.endswith("site-packages")]
    require(
        any(location.is_relative_to(s) for s in site),
        f"{PACKAGE} was imported from {location}, not from this venv's site-packages",
    )
    ok(f"{PACKAGE} is imported from {location.parent}")
    return module


def check_import_command(python: str) -> None:
    run([python, "-c", f"import {PACKAGE}"])
    ok(f'python -c "import {PACKAGE}"')


def check_every_module(module: Any) -> None:
    """Importing each module catches a file, or a dependency, the wheel lacks."""
    names = [m.name for m in pkgutil.walk_packages(module.__path__, f"{PACKAGE}.")]
    for name in names:
        if name.endswith(".__main__"):
            continue  # importing it runs the CLI
        try:
            importlib.import_module(name)
        except Exception as exc:
            raise CheckFailed(f"import {name} failed: {type(exc).__name__}: {exc}") from None
    require(
        importlib.resources.files(PACKAGE).joinpath("py.typed").is_file(),
        "py.typed is not installed",
    )
    ok(f"all {len(names)} modules import; py.typed is installed")


def check_versions(module: Any, cli: str, want: str) -> None:
    out = run([cli, "--version"]).stdout.strip()
    shown = out.split()[-1] if out else ""
    found = {
        "modelfetch --version": shown,
        "modelfetch.__version__": module.__version__,
        'importlib.metadata.version("modelfetch")': importlib.metadata.version(PACKAGE),
    }
    wrong = {k: v for k, v in found.items() if v != want}
    require(not wrong, f"versions disagree with {want}: {wrong}")
    ok(f"{out!r}; __version__ and the package metadata agree: {want}")


class CountingHandler(SimpleHTTPRequestHandler):
    """A plain static origin that counts what it is asked, so a cache hit is provable."""

    counter: list[int]

    def send_head(self) -> Any:
        self.counter[0] += 1
        return super().send_head()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the check's output to one line per step


def check_download(cli: str, work: Path) -> None:
    served = work / "origin"
    served.mkdir()
    payload = os.urandom(MODEL_BYTES)
    (served / "tiny-model.gguf").write_bytes(payload)
    counter = [0]
    handler = type("Handler", (CountingHandler,), {"counter": counter})
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(handler, directory=str(served)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/tiny-model.gguf"
        cache = work / "cache"
        env = {**os.environ, "MODELFETCH_CACHE_DIR": str(cache)}
        env.pop("MODELFETCH_OFFLINE", None)
        first = run([cli, "get", url], env)
        path = Path(first.stdout.strip().splitlines()[-1] if first.stdout.strip() else "")
        require(path.is_file(), f"modelfetch get printed {first.stdout!r}, not a file")
        require(path.resolve().is_relative_to(cache.resolve()), f"{path} is not in {cache}")
        require(path.read_bytes() == payload, f"{path} does not hold the served bytes")
        require(counter[0] >= 1, "the origin was never asked")
        ok(f"modelfetch get {url} -> {path} ({MODEL_BYTES} bytes, identical)")

        asked = counter[0]
        second = run([cli, "get", url], env)
        again = Path(second.stdout.strip().splitlines()[-1] if second.stdout.strip() else "")
        require(again == path, f"second get printed {second.stdout!r}, want {path}")
        require(counter[0] == asked, f"second get sent {counter[0] - asked} request(s)")
        require("cache hit" in second.stderr, f"second get said {second.stderr!r}")
        ok("second modelfetch get: cache hit, no request to the origin")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", required=True, help="the version the wheel must report")
    args = parser.parse_args(argv)
    bin_dir = Path(sys.executable).parent
    cli = str(bin_dir / PACKAGE)
    try:
        module = check_installed_copy()
        check_import_command(sys.executable)
        check_every_module(module)
        check_versions(module, cli, args.version)
        with tempfile.TemporaryDirectory(prefix="modelfetch-smoke-") as tmp:
            check_download(cli, Path(tmp))
    except CheckFailed as exc:
        print(f"wheel_smoke: FAIL: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
