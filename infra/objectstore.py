"""S3 access through boto3 (SigV4, path-style), the only durable store besides MLflow and Label Studio.

Every call is bounded: connect / read timeouts and a small attempt budget from settings
(``SIFT_S3_CONNECT_TIMEOUT_S``, ``SIFT_S3_READ_TIMEOUT_S``, ``SIFT_S3_MAX_ATTEMPTS``). boto3's
defaults (60 s each, no overall bound) let one hung S3 node hold a request thread for minutes.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.settings import Settings, get_settings


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    etag: str  # without quotes; changes when the object is overwritten
    size: int
    modified: datetime | None = None  # retention and drift pick objects by age without reading them


class ObjectStore:
    def __init__(self, settings: Settings | None = None, bucket: str | None = None) -> None:
        s = settings or get_settings()
        self.bucket = bucket or s.bucket
        self.client = boto3.client(
            "s3",
            endpoint_url=s.s3_endpoint or None,  # None: AWS S3
            aws_access_key_id=s.s3_access_key,
            aws_secret_access_key=s.s3_secret_key,
            region_name=s.s3_region,
            config=Config(
                signature_version="s3v4",
                # path style for self-hosted S3 (SeaweedFS, MinIO); AWS itself prefers virtual-hosted
                s3={"addressing_style": "path" if s.s3_endpoint else "virtual"},
                retries={"max_attempts": s.s3_max_attempts, "mode": "standard"},
                connect_timeout=s.s3_connect_timeout_s,
                read_timeout=s.s3_read_timeout_s,
                max_pool_connections=32,
            ),
        )

    def ensure_bucket(self, bucket: str | None = None) -> None:
        name = bucket or self.bucket
        try:
            self.client.head_bucket(Bucket=name)
        except ClientError:
            try:
                self.client.create_bucket(Bucket=name)
            except ClientError as exc:  # created concurrently by another process
                if exc.response.get("Error", {}).get("Code") not in {
                    "BucketAlreadyOwnedByYou",
                    "BucketAlreadyExists",
                }:
                    raise

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def put_json(self, key: str, obj: Any) -> None:
        self.put_bytes(key, json.dumps(obj, default=str).encode(), "application/json")

    def get_bytes(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise

    def get_json(self, key: str) -> Any | None:
        data = self.get_bytes(key)
        return None if data is None else json.loads(data)

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=key)
            return True
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404", "NotFound"}:
                return False
            raise

    def delete(self, key: str) -> None:
        self.client.delete_object(Bucket=self.bucket, Key=key)

    def list_keys(self, prefix: str) -> Iterator[str]:
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    def list_objects(self, prefix: str) -> Iterator[ObjectInfo]:
        """Keys under ``prefix`` with their ETag, size and age (one listing, no HEAD per object)."""
        paginator = self.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield ObjectInfo(item["Key"], item.get("ETag", "").strip('"'), int(item.get("Size", 0)),
                                 item.get("LastModified"))

    def download_to(self, key: str, fileobj: IO[bytes]) -> None:
        """Stream an object into a writable file (multipart, bounded memory); leaves it at its start."""
        self.client.download_fileobj(self.bucket, key, fileobj)
        fileobj.seek(0)

    def upload_file(self, path: str, key: str, progress: Callable[[int], Any] | None = None) -> None:
        """Multipart upload of a local file; ``progress`` gets the bytes sent since its last call."""
        self.client.upload_file(path, self.bucket, key, Callback=progress)

    def upload_stream(self, key: str, fileobj: Any) -> None:
        """Multipart upload from a file-like object: memory stays bounded for large files."""
        self.client.upload_fileobj(fileobj, self.bucket, key)

    def open_stream(self, key: str) -> Any:
        return self.client.get_object(Bucket=self.bucket, Key=key)["Body"]

    # ---- conditional writes: compare-and-set on one object (the retrain lease) ---------------------

    def put_if(self, key: str, data: bytes, *, etag: str | None = None,
               content_type: str = "application/json") -> str:
        """Write ``key`` only if it does not exist (``etag=None``: ``If-None-Match: *``) or still has
        ``etag`` (``If-Match``); returns the new ETag. Raises ``PreconditionFailed`` when another
        writer got there first — the S3 server decides, so two writers can never both win."""
        condition = {"IfNoneMatch": "*"} if etag is None else {"IfMatch": etag}
        try:
            out = self.client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type,
                                         **condition)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _CONFLICT_CODES:
                raise PreconditionFailed(f"{key} changed: {exc}") from exc
            raise
        return out["ETag"]

    def get_with_etag(self, key: str) -> tuple[bytes, str] | None:
        """The object and its ETag (the version a later ``put_if`` compares against), None if absent."""
        try:
            out = self.client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in {"NoSuchKey", "404"}:
                return None
            raise
        return out["Body"].read(), out["ETag"]


_CONFLICT_CODES = {"PreconditionFailed", "412", "ConditionalRequestConflict", "409"}


class PreconditionFailed(RuntimeError):
    """A conditional write lost: the object exists (create) or changed since it was read (update)."""
