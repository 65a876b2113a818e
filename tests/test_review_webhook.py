"""The Label Studio webhook trusts nothing it is sent, on the real S3 and broker (no Label Studio
needed: the payloads are Label Studio's shape, posted to the real router): labels outside the
classifier's set are refused and counted, future review times are clamped, each classifier's
secret opens only its own webhook and can be rotated, and the collected marker is written only
once the reviewed label is acked or spooled."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from infra.http import Services
from infra.local.procs import LOOPBACK, free_port
from infra.publisher import EventPublisher
from infra.reviewed import load_reviewed
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from review.api import build_collector, router
from review.labelstudio import WEBHOOK_PATH, WEBHOOK_SECRET_HEADER, choice_result
from tests.bus_helpers import isolated, read_topic

pytestmark = pytest.mark.timeout(180)
PROJECT = 4242


@dataclass
class Hook:
    client: TestClient
    services: Services
    settings: Settings
    name: str

    def payload(self, label: str, *, annotation_id: int = 99, updated_at: str = "2024-05-01T10:00:00Z",
                classifier: str | None = None) -> dict[str, Any]:
        data = {"classifier": classifier or self.name, "text": "Cup final tonight", "predicted_label": "tech",
                "origin": "low_confidence"}
        return {"action": "ANNOTATION_CREATED", "project": {"id": PROJECT},
                "task": {"id": 7, "project": PROJECT, "data": data},
                "annotation": {"id": annotation_id, "task": 7, "result": choice_result(label), "was_cancelled": False,
                               "completed_by": {"id": 1, "email": "rev@example.org"}, "updated_at": updated_at}}

    def post(self, payload: dict[str, Any], secret: str | None) -> int:
        headers = {WEBHOOK_SECRET_HEADER: secret} if secret is not None else {}
        return self.client.post(WEBHOOK_PATH, json=payload, headers=headers).status_code

    def collected(self) -> list[str]:
        return list(self.services.store.list_keys(f"review/{self.name}/collected/"))

    def use_publisher(self, publisher: EventPublisher) -> None:
        self.services.publisher = publisher
        self.services.review_collector = build_collector(self.services, publisher)


@pytest.fixture
def hook(sift_settings: Settings) -> Iterator[Hook]:
    # Label Studio is not running here: rotation's re-registration finds it unreachable
    settings = isolated(sift_settings).model_copy(update={"label_studio_url": f"http://{LOOPBACK}:{free_port()}"})
    publisher = EventPublisher(settings)
    services = Services.from_settings(settings, publisher=publisher)
    services.review_collector = build_collector(services, publisher)
    app = FastAPI()
    app.state.services = services
    app.include_router(router)
    name = f"wh-{uuid.uuid4().hex[:8]}"
    services.tenants.create(ClassifierConfig(name=name, labels=["sports", "tech", "politics"],
                                             label_studio_project_id=PROJECT))
    try:
        with TestClient(app) as client:
            yield Hook(client, services, settings, name)
    finally:
        publisher.close()


def _refused(name: str) -> float:
    return REGISTRY.get_sample_value("sift_review_labels_refused_total",
                                     {"classifier": name, "reason": "unknown_label"}) or 0.0


def test_label_outside_the_classifier_is_refused_and_counted(hook: Hook) -> None:
    secret = hook.settings.webhook_secret
    assert hook.post(hook.payload("cooking"), secret) == 200
    assert hook.post(hook.payload("cooking"), secret) == 200  # a redelivery is not counted twice
    assert _refused(hook.name) == 1
    assert load_reviewed(hook.services.store, hook.name) == [] and hook.collected() == []

    assert hook.post(hook.payload("sports", annotation_id=100), secret) == 200
    [rec] = load_reviewed(hook.services.store, hook.name)
    assert rec.label == "sports" and len(hook.collected()) == 1


def test_review_time_from_the_future_is_clamped_to_now(hook: Hook) -> None:
    before = datetime.now(UTC)
    assert hook.post(hook.payload("politics", updated_at="2999-01-01T00:00:00Z"), hook.settings.webhook_secret) == 200
    [rec] = load_reviewed(hook.services.store, hook.name)
    assert before <= rec.reviewed_at <= datetime.now(UTC)
    [event] = read_topic(hook.settings, "reviewed-labels", expect=1)
    assert event.reviewed_at == rec.reviewed_at


def test_each_classifier_has_its_own_rotatable_secret(hook: Hook) -> None:
    tenants = hook.services.tenants
    cfg = tenants.require(hook.name)
    cfg.webhook_secret = "first-secret"
    tenants.save(cfg)
    hook.services.tenant_cache.invalidate()
    assert hook.post(hook.payload("sports"), None) == 401
    assert hook.post(hook.payload("sports"), hook.settings.webhook_secret) == 403  # the global one: not for it
    assert hook.post(hook.payload("sports"), "first-secret") == 200
    # the global secret still serves a classifier without one of its own, never this one's
    other = f"wh-{uuid.uuid4().hex[:8]}"
    tenants.create(ClassifierConfig(name=other, labels=["sports", "tech"], label_studio_project_id=PROJECT + 1))
    assert hook.post(hook.payload("sports", classifier=other), "first-secret") == 403
    assert hook.post(hook.payload("sports", classifier=other), hook.settings.webhook_secret) == 200

    r = hook.client.post(f"/v1/admin/classifiers/{hook.name}/webhook-secret",
                         headers={"x-admin-key": hook.settings.admin_key})
    assert r.status_code == 200, r.text
    assert r.json() == {"classifier": hook.name, "label_studio_updated": False}  # LS down: the worker re-registers
    new = tenants.require(hook.name).webhook_secret
    assert new and new != "first-secret"
    assert hook.post(hook.payload("tech", annotation_id=101), "first-secret") == 403
    assert hook.post(hook.payload("tech", annotation_id=101), new) == 200
    assert hook.client.post(f"/v1/admin/classifiers/{hook.name}/webhook-secret").status_code == 401


def test_collected_marker_waits_for_a_durable_publish(hook: Hook) -> None:
    dead = EventPublisher(hook.settings.model_copy(update={"kafka_bootstrap": f"{LOOPBACK}:{free_port()}"}))
    dead.spool._db.execute("PRAGMA query_only = ON")  # the spool refuses writes: nothing can be durable
    try:
        hook.use_publisher(dead)
        assert hook.post(hook.payload("sports"), hook.settings.webhook_secret) == 200
        assert hook.collected() == []  # not marked: reconciliation (or a redelivery) will record it
    finally:
        dead.spool._db.execute("PRAGMA query_only = OFF")
        dead.close()
    good = EventPublisher(hook.settings)
    try:
        hook.use_publisher(good)
        assert hook.post(hook.payload("sports"), hook.settings.webhook_secret) == 200
        assert len(hook.collected()) == 1
    finally:
        good.close()
    [event] = read_topic(hook.settings, "reviewed-labels", expect=1)
    assert event.label == "sports"
