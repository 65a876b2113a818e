"""Explicit feedback is durable before its 2xx: a 202 means the event is acked by the broker or
committed to the local SQLite spool, so it survives a broker outage *and* a SIGKILL of the API
process right after the answer; when neither is possible the answer is 503 and nothing is accepted.

Real parts: the full API app (``sift.app``) as a uvicorn subprocess, Tansu (S3 storage) killed and
restarted, SeaweedFS for tenants and predictions.
"""

from __future__ import annotations

import io
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from classifier.engine import ServingEngine
from infra.local.procs import LOOPBACK, free_port
from infra.local.stack import settings_env
from infra.objectstore import ObjectStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from sift.app import create_app
from tests.bus_helpers import isolated, read_topic, wait_until
from tests.services import KafkaService

pytestmark = pytest.mark.timeout(300)
LABELS = ["sports", "tech", "politics"]


def _spool_rows(settings: Settings) -> int:
    path = settings.spool_dir / "events.sqlite3"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return db.execute("SELECT count(*) FROM spool").fetchone()[0]
    finally:
        db.close()


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex((LOOPBACK, port)) == 0


class ApiProcess:
    """``uvicorn --factory sift.app:create_app`` with the test's settings in its environment."""

    def __init__(self, settings: Settings, log: Path) -> None:
        self.settings = settings
        self.log = log
        self.port = free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ApiProcess:
        # no model watcher: nothing here serves a model, and it would only add a consumer group join
        env = {**os.environ, **settings_env(self.settings), "SIFT_MODEL_WATCH": "false", "HF_HUB_OFFLINE": "1"}
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "--factory", "sift.app:create_app", "--host", LOOPBACK,
                 "--port", str(self.port), "--log-level", "warning"],
                env=env, stdout=out, stderr=subprocess.STDOUT, cwd=Path(__file__).parents[1],
            )
        ok = wait_until(lambda: self.proc.poll() is None and _port_open(self.port)
                        and httpx.get(self.url + "/healthz", timeout=2).status_code == 200, 90, 0.3)
        assert ok, self.log.read_text()[-3000:]
        return self

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        assert self.proc.wait(30) == -signal.SIGKILL

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@pytest.fixture
def api(sift_settings: Settings, tmp_path: Path) -> Iterator[ApiProcess]:
    proc = ApiProcess(isolated(sift_settings), tmp_path / "api.log")
    try:
        yield proc
    finally:
        proc.stop()


def test_accepted_feedback_survives_broker_outage_and_api_sigkill(api: ApiProcess,
                                                                   kafka_broker: KafkaService) -> None:
    settings = api.settings
    name = f"dur-{uuid.uuid4().hex[:8]}"
    _, key = TenantStore(ObjectStore(settings)).create(ClassifierConfig(name=name, labels=LABELS))
    api.start()
    headers = {"x-api-key": key}
    url = f"{api.url}/v1/classifiers/{name}/feedback"

    # broker up: the 202 comes after the broker's ack, nothing is spooled
    r = httpx.post(url, json={"text": "cup final tonight", "label": "tech", "verdict": "dislike",
                              "correct_label": "sports"}, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    acked_id = r.json()["event_id"]
    assert _spool_rows(settings) == 0

    # broker down: the 202 comes once the event is committed to the spool
    kafka_broker.kill()
    t0 = time.perf_counter()
    r = httpx.post(url, json={"text": "rates rise again", "label": "sports", "verdict": "dislike",
                              "correct_label": "politics"}, headers={**headers, "Idempotency-Key": "k-1"},
                   timeout=30)
    waited = time.perf_counter() - t0
    assert r.status_code == 202, r.text
    spooled_id = r.json()["event_id"]
    assert _spool_rows(settings) == 1  # committed before the answer: readable by another process now
    # while the broker stays down, the next one goes straight to the spool (no ack wait)
    t1 = time.perf_counter()
    r = httpx.post(f"{url}/batch", files={"file": ("fb.csv", io.BytesIO(b"text,label\nelection day,politics\n"
                                                                          b"new chip,tech\n"))},
                   headers=headers, timeout=30)
    batch_waited = time.perf_counter() - t1
    assert r.status_code == 202, r.text
    assert r.json()["rows_accepted"] == 2
    assert _spool_rows(settings) == 3

    api.kill9()  # a crash right after the answers: no close(), no flush
    kafka_broker.start()
    api.start()  # same data dir, so the same spool: the new process redelivers what is there
    try:
        assert wait_until(lambda: _spool_rows(settings) == 0, 90, 0.5), api.log.read_text()[-3000:]
    finally:
        api.stop()

    events = read_topic(settings, "review-requests", expect=4, timeout_s=60)
    ids = [e.event_id for e in events]
    batch_ids = {e.event_id for e in events if e.source == "batch_feedback"}
    print(f"\nfirst 202 with the broker down after {waited:.2f}s (ack wait, then spool); "
          f"batch while down {batch_waited:.2f}s; raw events {len(ids)}, distinct {len(set(ids))}")
    assert {acked_id, spooled_id} <= set(ids) and len(batch_ids) == 2
    assert len(set(ids)) == 4  # every accepted event arrives, exactly once after dedupe
    spooled = next(e for e in events if e.event_id == spooled_id)
    assert (spooled.text, spooled.suggested_label, spooled.source) == ("rates rise again", "politics",
                                                                       "user_feedback")


@pytest.fixture
def dead_ends(sift_settings: Settings) -> Iterator[tuple[TestClient, EventPublisher, Settings, str]]:
    """An app whose broker is unreachable and whose spool refuses writes."""
    settings = isolated(sift_settings).model_copy(update={"kafka_bootstrap": f"{LOOPBACK}:{free_port()}"})
    publisher = EventPublisher(settings)
    # the spool database is there, but SQLite refuses every write on its connection
    # ("attempt to write a readonly database"): a real failure of the real write path. (chmod
    # would not do: the tests run as root.)
    publisher.spool._db.execute("PRAGMA query_only = ON")
    name = f"dead-{uuid.uuid4().hex[:8]}"
    app = create_app(settings, engine=ServingEngine(lambda n: None), publisher=publisher)
    with TestClient(app) as client:
        _, key = client.app.state.services.tenants.create(ClassifierConfig(name=name, labels=LABELS))
        client.headers["x-api-key"] = key
        yield client, publisher, settings, name


def test_dead_broker_and_unwritable_spool_is_503_and_nothing_accepted(dead_ends) -> None:  # noqa: ANN001
    client, publisher, settings, name = dead_ends
    r = client.post(f"/v1/classifiers/{name}/feedback", json={"text": "x", "label": "tech", "verdict": "like"})
    assert r.status_code == 503, r.text
    detail = r.json()["detail"]
    assert detail.startswith("feedback not accepted, retry later")
    assert "neither acknowledged by the broker" in detail and "nor written to the local spool" in detail
    assert "readonly database" in detail
    assert r.headers["retry-after"] == "5"

    r = client.post(f"/v1/classifiers/{name}/feedback/batch",
                    files={"file": ("fb.csv", io.BytesIO(b"text,label\na,tech\nb,sports\n"))})
    assert r.status_code == 503, r.text
    assert "not accepted, retry the same file" in r.json()["detail"]
    store = client.app.state.services.store
    reports = [store.get_json(k) for k in store.list_keys(f"feedback-uploads/{name}/") if k.endswith(".report.json")]
    assert [(rep["status"], rep["rows_accepted"]) for rep in reports] == [("rejected", 0)]
    assert "not accepted" in reports[0]["error"]

    publisher.spool._db.execute("PRAGMA query_only = OFF")
    assert _spool_rows(settings) == 0  # nothing half-accepted
    assert publisher.stats().sent == 0
