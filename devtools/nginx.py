"""Run Debian's nginx on loopback as a real origin: its own ETag, Last-Modified and Range.

Used by the tests, the demo and the benchmarks, so the origin's HTTP semantics come from
software nobody here wrote.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

NGINX_CANDIDATES = ("nginx", "/usr/sbin/nginx")


def nginx_binary() -> str | None:
    for candidate in NGINX_CANDIDATES:
        found = shutil.which(candidate) or (candidate if os.path.isfile(candidate) else None)
        if found:
            return found
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Nginx:
    """``with Nginx(docroot) as n: n.url('model.gguf')``"""

    def __init__(self, docroot: Path, extra_http: str = "", extra_server: str = "") -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed; run scripts/setup.sh (apt-get nginx-light)")
        self.binary = binary
        self.docroot = Path(docroot).resolve()
        self.extra_http = extra_http
        self.extra_server = extra_server
        self.prefix = Path(tempfile.mkdtemp(prefix="modelfetch-nginx-"))
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    def _config(self) -> str:
        user = "user root;" if os.geteuid() == 0 else ""
        p = self.prefix
        return f"""
{user}
daemon off;
worker_processes 1;
pid {p}/nginx.pid;
error_log {p}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {p}/access.log;
    client_body_temp_path {p}/body;
    proxy_temp_path {p}/proxy;
    fastcgi_temp_path {p}/fastcgi;
    uwsgi_temp_path {p}/uwsgi;
    scgi_temp_path {p}/scgi;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 10000;
    default_type application/octet-stream;
    {self.extra_http}
    server {{
        listen 127.0.0.1:{self.port};
        root {self.docroot};
        {self.extra_server}
    }}
}}
"""

    def start(self) -> Nginx:
        last_error = ""
        for _attempt in range(5):  # a freed port can be taken by someone else; retry a few
            self.port = free_port()
            conf = self.prefix / "nginx.conf"
            conf.write_text(self._config())
            self.proc = subprocess.Popen(
                [self.binary, "-c", str(conf), "-p", str(self.prefix)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    last_error = (self.proc.stderr.read() if self.proc.stderr else b"").decode()
                    break
                try:
                    with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                        return self
                except OSError:
                    time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"nginx did not start: {last_error.strip()[:500]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> Nginx:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.prefix, ignore_errors=True)
