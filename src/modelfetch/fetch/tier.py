"""A shared S3-compatible tier between machines' local caches and the origin.

A file lives under ``<prefix>/<cache key>/``: ``manifest.json`` and ``chunks/<run>/<n>``
(tierstream.py), and while a machine downloads it for the fleet, ``lease.json`` (lease.py;
fleet.py puts them together). Earlier versions wrote one object, ``<prefix>/<cache
key>/<file name>`` with its SHA-256 and size as metadata; that form is still read, through
the same resumable, verified downloader as any URL (a presigned GET whose signature is
redacted wherever the URL is shown).

This module is the S3 side only: small JSON documents with conditional writes
(``If-None-Match: *``, ``If-Match``) for the lease, chunk objects, and the old single
object. boto3 signs and retries; lease and manifest calls use short timeouts, so a dead
store is noticed within seconds, not minutes.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidSourceError
from ..lease import LEASE_NAME, MAX_DOC_BYTES
from ..options import env_s3_endpoint
from ..source import ModelSource

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
PRESIGN_SECONDS = 3600


@dataclass(frozen=True)
class TierObject:
    key: str
    sha256: str
    size: int


class RemoteTier:
    def __init__(
        self, url: str, endpoint_url: str | None = None, *, conditional_writes: bool = True
    ) -> None:
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
        self.endpoint_url = endpoint_url or env_s3_endpoint()
        # False: never send If-None-Match / If-Match (a store that rejects them); the lease
        # protocol then relies on its read-back confirmation alone.
        self.conditional_writes = conditional_writes
        self._clients: dict[str, Any] = {}
        self._client_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"RemoteTier(s3://{self.bucket}/{self.prefix}, endpoint={self.endpoint_url})"

    @property
    def client(self) -> Any:
        """For object bodies (chunks, the old single object): patient."""
        return self._client("data", read_timeout=60, attempts=3)

    @property
    def control(self) -> Any:
        """For the lease and the manifest: a follower's wait and a leader's heartbeat are
        bounded by the lease's ttl, so these calls must fail fast, not in minutes."""
        return self._client("control", read_timeout=10, attempts=2)

    def _client(self, kind: str, read_timeout: float, attempts: int) -> Any:
        with self._client_lock:  # boto3's default session is not thread-safe
            if kind not in self._clients:
                self._clients[kind] = self._make_client(read_timeout, attempts)
            return self._clients[kind]

    def _make_client(self, read_timeout: float, attempts: int) -> Any:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:  # pragma: no cover - depends on the install
            raise InvalidSourceError(
                "the S3 tier needs boto3: pip install 'modelfetch[s3]'"
            ) from None
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            config=Config(
                connect_timeout=5,
                read_timeout=read_timeout,
                retries={"max_attempts": attempts, "mode": "standard"},
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                max_pool_connections=16,
            ),
        )

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

    # -- the streaming layout: <prefix>/<key>/{lease.json, manifest.json, chunks/<run>/<n>}
    def entry_key(self, source: ModelSource) -> str:
        return f"{self.prefix}/{source.cache_key}" if self.prefix else source.cache_key

    def read_doc(self, key: str, limit: int) -> tuple[bytes, str] | None:
        """A small object's bytes and ETag; None if absent. Larger than ``limit``: b''."""
        from botocore.exceptions import ClientError

        try:
            obj = self.control.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                return None
            raise
        body = obj["Body"]
        try:
            length = obj.get("ContentLength")
            data = b"" if not isinstance(length, int) or length > limit else body.read(limit + 1)
        finally:
            body.close()
        return (data if len(data) <= limit else b""), str(obj.get("ETag", ""))

    def write_doc(
        self, key: str, body: bytes, *, create: bool = False, match: str | None = None
    ) -> str | None:
        """PUT a small JSON object, if absent (``create``) or if unchanged (``match``).
        Returns its ETag, or None when the store refused because the condition failed."""
        from botocore.exceptions import ClientError, ParamValidationError

        args: dict[str, Any] = {"Bucket": self.bucket, "Key": key, "Body": body}
        args["ContentType"] = "application/json"
        if self.conditional_writes and create:
            args["IfNoneMatch"] = "*"
        elif self.conditional_writes and match is not None:
            args["IfMatch"] = match
        try:
            return str(self.control.put_object(**args).get("ETag", ""))
        except ClientError as exc:
            if _code(exc) in _CONFLICT:
                return None
            if _code(exc) not in _UNSUPPORTED or not self.conditional_writes:
                raise
        except ParamValidationError:  # a botocore too old to know the condition headers
            pass
        self.conditional_writes = False  # the store cannot do it: confirmation alone
        return self.write_doc(key, body, create=create, match=match)

    def delete(self, key: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.control.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) not in _MISSING:
                raise

    def put_chunk(self, key: str, data: bytes, sha256: str) -> None:
        self.client.put_object(
            Bucket=self.bucket,
            Key=key,
            Body=data,
            Metadata={"sha256": sha256},
            ContentType="application/octet-stream",
        )

    def open_object(self, key: str) -> tuple[Any, int | None]:
        """A streaming body and its announced length; raises KeyError if absent."""
        from botocore.exceptions import ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) in _MISSING:
                raise KeyError(key) from None
            raise
        length = obj.get("ContentLength")
        return obj["Body"], length if isinstance(length, int) else None

    def lease_store(self, source: ModelSource) -> TierLeaseStore:
        return TierLeaseStore(self, f"{self.entry_key(source)}/{LEASE_NAME}")


_MISSING = ("404", "NoSuchKey", "NotFound")
_CONFLICT = ("412", "PreconditionFailed", "409", "ConditionalRequestConflict")
_UNSUPPORTED = ("501", "NotImplemented")


def _code(exc: Any) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class TierLeaseStore:
    """lease.LeaseStore over one S3 object."""

    def __init__(self, tier: RemoteTier, key: str) -> None:
        self.tier = tier
        self.key = key

    def read(self) -> tuple[bytes, str] | None:
        return self.tier.read_doc(self.key, MAX_DOC_BYTES)

    def create(self, body: bytes) -> str | None:
        return self.tier.write_doc(self.key, body, create=True)

    def swap(self, body: bytes, etag: str) -> str | None:
        return self.tier.write_doc(self.key, body, match=etag)

    def remove(self) -> None:
        self.tier.delete(self.key)
