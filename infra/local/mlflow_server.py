"""MLflow tracking + registry server: SQLite backend, artifacts proxied to the local S3 server.

Clients only ever see `mlflow-artifacts:/` URIs, so they need no S3 credentials of their own.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import httpx

from infra.local.procs import LOOPBACK, LocalService, free_port


class MlflowServer(LocalService):
    """MLflow tracking + registry: SQLite backend store, artifacts proxied to S3."""

    name = "mlflow"
    start_timeout = 90.0
    stop_grace = 10
    ready_interval = 0.5

    def __init__(
        self,
        data_dir: Path,
        *,
        port: int | None = None,
        s3_endpoint: str,
        s3_access_key: str,
        s3_secret_key: str,
        s3_region: str = "us-east-1",
        bucket: str,
        artifacts_prefix: str = "mlflow-artifacts",
        log_dir: Path | None = None,
        die_with_parent: bool = False,
        python: str = sys.executable,
        backend_store_uri: str | None = None,
    ) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.log_dir = Path(log_dir).resolve() if log_dir else self.data_dir
        self.port = port or free_port()
        self.s3_endpoint = s3_endpoint
        self.s3_access_key = s3_access_key
        self.s3_secret_key = s3_secret_key
        self.s3_region = s3_region
        self.bucket = bucket
        self.artifacts_prefix = artifacts_prefix
        self.die_with_parent = die_with_parent
        self.python = python
        self.backend_store_uri = backend_store_uri  # None: SQLite in data_dir (PostgreSQL in the cluster)
        self.process = None

    @property
    def tracking_uri(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def artifacts_destination(self) -> str:
        return f"s3://{self.bucket}/{self.artifacts_prefix}"

    def _argv(self) -> list[str]:
        db = self.data_dir / "mlflow.db"
        return [
            self.python, "-m", "mlflow", "server",
            "--backend-store-uri", self.backend_store_uri or f"sqlite:///{db}",
            "--serve-artifacts",
            "--artifacts-destination", self.artifacts_destination,
            "--host", LOOPBACK,
            "--port", str(self.port),
            "--workers", "1",
        ]

    def _env(self) -> dict[str, str]:
        env = {
            # the server process is the only S3 client for artifacts
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": self.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3_secret_key,
            "AWS_DEFAULT_REGION": self.s3_region,
            "MLFLOW_S3_IGNORE_TLS": "true",
            # no usage telemetry, no network probes: this machine has no internet
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "DO_NOT_TRACK": "true",
            # job execution spawns huey consumer processes (GenAI jobs): Sift needs none of it
            "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
            "PYTHONUNBUFFERED": "1",
        }
        # inherit the rest (PATH, venv) but never a parent's tracking config or other AWS profile
        inherited = {
            k: v for k, v in os.environ.items()
            if not k.startswith(("MLFLOW_", "AWS_", "SIFT_", "BOTO")) and k not in {"PORT", "HOST"}
        }
        return {**inherited, **env}

    def ready(self) -> bool:
        return httpx.get(f"{self.tracking_uri}/health", timeout=2).status_code == 200

    def start(self, timeout: float | None = None) -> MlflowServer:
        if self.is_running:
            return self
        self._launch(self._argv(), self._env(), self.port, timeout)
        return self

