"""Every external client gives up on a server that accepts connections and never answers, instead of
holding its caller for minutes (boto3's 60 s x 5 tries, MLflow's 120 s x 7, an unbounded SDK).

The server is a real listening socket on loopback that reads nothing back; the module's pytest
timeout is what the old defaults overran, so these fail (time out) without the bounds."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator

import pytest
from botocore.exceptions import ReadTimeoutError

from infra.local.procs import LOOPBACK
from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.settings import Settings
from review.labelstudio import LabelStudioUnavailable, ReviewProjects

pytestmark = [pytest.mark.timeout(60), pytest.mark.integration]  # a listening (black-hole) server


@pytest.fixture
def silent_url() -> Iterator[str]:
    """http://host:port of a server that accepts every connection and never sends a byte."""
    server = socket.create_server((LOOPBACK, 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        yield f"http://{LOOPBACK}:{server.getsockname()[1]}"
    finally:
        stop.set()
        t.join(5)
        for conn in held:
            conn.close()
        server.close()


def test_object_store_read_timeout_and_bounded_attempts(silent_url: str) -> None:
    settings = Settings(s3_endpoint=silent_url, s3_read_timeout_s=1, s3_max_attempts=2)
    store = ObjectStore(settings)
    with pytest.raises(ReadTimeoutError):
        store.get_bytes("anything")


def test_mlflow_requests_are_bounded(silent_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLFLOW_HTTP_REQUEST_TIMEOUT", "MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"):
        monkeypatch.delenv(var, raising=False)
    registry = Registry(Settings(mlflow_tracking_uri=silent_url, mlflow_timeout_s=1, mlflow_max_retries=0))
    with pytest.raises(Exception, match="(?i)timed? ?out|timeout"):
        registry.version_tags("news", "1")


def test_label_studio_client_is_bounded(silent_url: str) -> None:
    projects = ReviewProjects.from_settings(Settings(label_studio_url=silent_url, label_studio_timeout_s=1))
    with pytest.raises(LabelStudioUnavailable):
        projects.project_exists(1, "news")
