"""A shared S3-compatible tier between machines' local caches and the origin.

``ensure`` checks the local cache, then the tier, then the origin, and puts what it fetched
from the origin into the tier, so a fleet pulls each file from the origin once. Objects live
at ``<prefix>/<cache key>/<file name>`` and carry their SHA-256 and size as object metadata.

A tier object is never trusted blindly: it is downloaded with its recorded SHA-256 as the
expected hash (and must match a caller-pinned hash too), through the same resumable,
parallel, verified downloader as any URL: boto3 signs a presigned GET, and the signature
in its query string is redacted wherever the URL is shown. boto3 does the S3 parts it is
good at: HEAD with metadata, multipart uploads, signing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import InvalidSourceError
from .source import ModelSource

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRESIGN_SECONDS = 3600


@dataclass(frozen=True)
class TierObject:
    key: str
    sha256: str
    size: int


class RemoteTier:
    def __init__(self, url: str, endpoint_url: str | None = None) -> None:
        if not url.startswith("s3://"):
            raise InvalidSourceError("remote tier must look like s3://bucket/prefix")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not _BUCKET.match(bucket):
            raise InvalidSourceError(f"invalid S3 bucket name {bucket[:70]!r}")
        prefix = prefix.strip("/")
        if any(part in ("", ".", "..") for part in prefix.split("/")) and prefix:
            raise InvalidSourceError("S3 prefix must not contain empty, '.' or '..' parts")
        self.bucket = bucket
        self.prefix = prefix
        self.endpoint_url = endpoint_url or os.environ.get("MODELFETCH_S3_ENDPOINT") or None
        self._client: Any = None

    def __repr__(self) -> str:
        return f"RemoteTier(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url})"

    @property
    def client(self) -> Any:
        if self._client is None:
            try:
                import boto3
                from botocore.config import Config
            except ImportError:  # pragma: no cover - depends on the install
                raise InvalidSourceError(
                    "the S3 tier needs boto3: pip install 'modelfetch[s3]'"
                ) from None
            self._client = boto3.client(
                "s3",
                endpoint_url=self.endpoint_url,
                config=Config(
                    connect_timeout=5,
                    read_timeout=60,
                    retries={"max_attempts": 3, "mode": "standard"},
                    s3={"addressing_style": "path"},
                    signature_version="s3v4",
                ),
            )
        return self._client

    def key_for(self, source: ModelSource) -> str:
        name = f"{source.cache_key}/{source.file_name}"
        return f"{self.prefix}/{name}" if self.prefix else name

    def lookup(self, source: ModelSource) -> TierObject | None:
        """The tier's object for ``source`` if it exists and describes itself properly."""
        from botocore.exceptions import ClientError

        key = self.key_for(source)
        try:
            head = self.client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        meta = {k.lower(): v for k, v in (head.get("Metadata") or {}).items()}
        sha = str(meta.get("sha256", "")).lower()
        size = head.get("ContentLength")
        if (
            not _SHA256.match(sha)
            or not isinstance(size, int)
            or str(meta.get("size")) != str(size)
        ):
            return None  # not written by us, or half-described: ignore it
        return TierObject(key, sha, size)

    def presigned_get(self, obj: TierObject) -> str:
        url: str = self.client.generate_presigned_url(
            "get_object",
            Params={"Bucket": self.bucket, "Key": obj.key},
            ExpiresIn=PRESIGN_SECONDS,
        )
        return url

    def upload(self, source: ModelSource, path: Path, sha256: str, size: int) -> None:
        self.client.upload_file(
            str(path),
            self.bucket,
            self.key_for(source),
            ExtraArgs={
                "Metadata": {"sha256": sha256, "size": str(size)},
                "ContentType": "application/octet-stream",
            },
        )
