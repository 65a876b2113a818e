"""Pytest plugin: the real local services (SeaweedFS S3, Tansu Kafka, MLflow, Label Studio) on free
loopback ports in a temporary folder, started lazily — only what a test requests — once per session.

Fixtures: `s3_server`, `kafka_broker`, `mlflow_server`, `label_studio`, `sift_settings`.
Every server is started with a parent-death signal, so a crashed session leaves nothing running.
Set SIFT_TEST_LS_DATA_DIR to a folder to reuse a migrated Label Studio across sessions
(first start ~90 s, later ~10 s); don't share that folder between concurrent sessions.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from infra.local.labelstudio import LabelStudioServer, label_studio_venv
from infra.local.mlflow_server import MlflowServer
from infra.local.procs import LOOPBACK, free_port
from infra.local.seaweed import SeaweedServer
from infra.local.stack import settings_env
from infra.local.tansu import TansuBroker
from infra.settings import Settings, get_settings

ACCESS_KEY = "sift-test"
SECRET_KEY = "sift-test-secret-key"
REGION = "us-east-1"
LS_TOKEN = "sift-test-ls-token"


@dataclass
class S3Service:
    endpoint: str
    access_key: str
    secret_key: str
    region: str
    bucket: str  # unique per test session, already created
    server: SeaweedServer = field(repr=False)

    @property
    def client(self) -> Any:
        return self.server.client

    def create_bucket(self, name: str) -> None:
        self.server.create_bucket(name)


@dataclass
class KafkaService:
    """Tansu with S3 storage: records and committed offsets survive kill()/restart()."""

    broker: TansuBroker = field(repr=False)

    @property
    def bootstrap(self) -> str:
        return self.broker.bootstrap

    @property
    def is_running(self) -> bool:
        return self.broker.is_running

    def kill(self) -> None:
        """SIGKILL the broker (a crash)."""
        self.broker.kill()

    def stop(self) -> None:
        """SIGTERM the broker (a clean shutdown)."""
        self.broker.stop()

    def start(self) -> None:
        self.broker.start()

    def restart(self) -> None:
        """Stop if running, then start on the same port and storage; returns when clients can connect."""
        self.broker.restart()


@dataclass
class MlflowService:
    tracking_uri: str
    server: MlflowServer = field(repr=False)


@dataclass
class LabelStudioService:
    url: str
    token: str
    username: str
    password: str
    server: LabelStudioServer = field(repr=False)


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def s3_server(services_dir: Path) -> Iterator[S3Service]:
    server = SeaweedServer(
        services_dir / "s3", s3_port=free_port(), access_key=ACCESS_KEY, secret_key=SECRET_KEY,
        region=REGION, die_with_parent=True,
    ).start()
    bucket = f"sift-test-{uuid.uuid4().hex[:10]}"
    server.create_bucket(bucket)
    try:
        yield S3Service(server.endpoint, ACCESS_KEY, SECRET_KEY, REGION, bucket, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _kafka_broker_session(services_dir: Path, s3_server: S3Service) -> Iterator[KafkaService]:
    bucket = f"{s3_server.bucket}-kafka"
    s3_server.create_bucket(bucket)  # tansu does not create its bucket
    broker = TansuBroker.on_s3(
        services_dir / "kafka", bucket=bucket, s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key, s3_region=REGION,
        port=free_port(), die_with_parent=True,
    ).start()
    try:
        yield KafkaService(broker)
    finally:
        broker.stop()


@pytest.fixture
def kafka_broker(_kafka_broker_session: KafkaService) -> KafkaService:
    """The session broker, brought back up first if an earlier fault test left it down."""
    if not _kafka_broker_session.is_running:
        _kafka_broker_session.start()
    return _kafka_broker_session


@pytest.fixture(scope="session")
def mlflow_server(services_dir: Path, s3_server: S3Service) -> Iterator[MlflowService]:
    server = MlflowServer(
        services_dir / "mlflow", port=free_port(), s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key, s3_secret_key=s3_server.secret_key, s3_region=REGION,
        bucket=s3_server.bucket, die_with_parent=True,
    ).start()
    try:
        yield MlflowService(server.tracking_uri, server)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def label_studio(services_dir: Path) -> Iterator[LabelStudioService]:
    venv = label_studio_venv()
    if not (venv / "bin" / "label-studio").exists():
        pytest.skip(f"Label Studio venv not found at {venv} (set SIFT_LABEL_STUDIO_VENV)")
    reuse = os.environ.get("SIFT_TEST_LS_DATA_DIR")
    data_dir = Path(reuse) if reuse else services_dir / "label-studio"
    defaults = Settings()
    # fixed token: a reused data dir keeps the user and token it was first created with
    server = LabelStudioServer(
        data_dir, port=free_port(), username=defaults.label_studio_username,
        password=defaults.label_studio_password, token=LS_TOKEN, log_dir=services_dir, die_with_parent=True,
    )
    server.start(timeout=float(os.environ.get("SIFT_TEST_LS_START_TIMEOUT", "300")))
    try:
        yield LabelStudioService(server.url, server.token, server.username, server.password, server)
    finally:
        server.stop()


def _closed_url() -> str:
    """An address nothing listens on: a test that forgot to request a service fails fast instead
    of reaching whatever runs on the default port."""
    return f"http://{LOOPBACK}:{free_port()}"


def service_settings(s3: S3Service, kafka: KafkaService, data_dir: Path, *, mlflow: MlflowService | None = None,
                     ls: LabelStudioService | None = None) -> Settings:
    """Settings pointing at the session's services; the ones not given point at a closed port."""
    defaults = Settings()
    settings = Settings(
        data_dir=data_dir,
        s3_endpoint=s3.endpoint,
        s3_access_key=s3.access_key,
        s3_secret_key=s3.secret_key,
        s3_region=s3.region,
        bucket=s3.bucket,
        kafka_bootstrap=kafka.bootstrap,
        mlflow_tracking_uri=mlflow.tracking_uri if mlflow else _closed_url(),
        label_studio_url=ls.url if ls else _closed_url(),
        label_studio_token=ls.token if ls else defaults.label_studio_token,
        label_studio_username=ls.username if ls else defaults.label_studio_username,
        label_studio_password=ls.password if ls else defaults.label_studio_password,
        public_api_url=_closed_url(),
    )
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


@contextlib.contextmanager
def exported(settings: Settings) -> Iterator[Settings]:
    """SIFT_* set to ``settings`` (so subprocesses and ``get_settings()`` see them), restored after."""
    # own MonkeyPatch so the environment is restored *before* the settings cache is cleared
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("SIFT_")]:
            if key not in {"SIFT_LABEL_STUDIO_VENV", "SIFT_WEED_BIN", "SIFT_TANSU_BIN", "SIFT_TEST_LS_DATA_DIR"}:
                mp.delenv(key)
        for key, value in settings_env(settings).items():
            mp.setenv(key, value)
        get_settings.cache_clear()
        try:
            yield settings
        finally:
            get_settings.cache_clear()
    get_settings.cache_clear()


@pytest.fixture
def sift_settings(
    request: pytest.FixtureRequest,
    s3_server: S3Service,
    kafka_broker: KafkaService,
    tmp_path: Path,
) -> Iterator[Settings]:
    """Settings pointing at the session's S3 and Kafka, plus MLflow / Label Studio when the test
    also requests `mlflow_server` / `label_studio`. SIFT_* are exported so subprocesses inherit
    them, and `get_settings()` returns these settings for the duration of the test."""
    mlflow = request.getfixturevalue("mlflow_server") if "mlflow_server" in request.fixturenames else None
    ls = request.getfixturevalue("label_studio") if "label_studio" in request.fixturenames else None
    with exported(service_settings(s3_server, kafka_broker, tmp_path / "sift-data", mlflow=mlflow, ls=ls)) as s:
        yield s


@pytest.fixture
def own_bucket_settings(sift_settings: Settings) -> Iterator[Settings]:
    """`sift_settings` with a bucket of its own: an API started here preloads (and /readyz waits for)
    only this test's classifiers, not every champion the session's earlier tests left in the shared bucket."""
    from infra.objectstore import ObjectStore

    own = sift_settings.model_copy(update={"bucket": f"{sift_settings.bucket}-{uuid.uuid4().hex[:10]}"})
    ObjectStore(own).ensure_bucket()
    with exported(own) as s:
        yield s
