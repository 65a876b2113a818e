"""Dead letters an operator can act on, on the real broker, store, review worker and Label Studio."""

from __future__ import annotations

import uuid

from fastapi import FastAPI
from fastapi.testclient import TestClient

from infra.events import TOPIC_REVIEW_REQUESTS
from infra.tenants import ClassifierConfig
from infra.texts import text_hash
from ops.api import router as dead_letters_router
from ops.deadletters import DeadLetters
from review.labelstudio import ensure_project
from review.worker import GROUP_ID
from tests.bus_helpers import committed_offset, wait_until
from tests.review_fixtures import LABELS, ReviewEnv, WorkerThread, review_env_fixture  # noqa: F401


def _committed(env: ReviewEnv) -> int:
    """The review worker group's committed offsets on the review-requests topic, summed over partitions."""
    return committed_offset(env.settings, GROUP_ID, TOPIC_REVIEW_REQUESTS)


def _task_count(env: ReviewEnv, project: int) -> int:
    query = '{"filters": {"conjunction": "and", "items": []}}'
    return sum(len(page) for _, page in env.projects._pages(project, query, fields="all"))


def _admin(env: ReviewEnv) -> TestClient:
    app = FastAPI()
    app.state.services = env.api.services
    app.include_router(dead_letters_router)
    return TestClient(app, headers={"x-admin-key": env.settings.admin_key})


def test_poison_request_is_dead_lettered_fixed_replayed_and_processed_once(review_env: ReviewEnv) -> None:
    env = review_env
    late = f"late-{uuid.uuid4().hex[:6]}"
    poison = env.request("a text for a classifier that does not exist yet", classifier=late)
    env.publish(poison)
    worker = WorkerThread(env.settings).start()
    dlq = DeadLetters(env.settings, env.store)
    admin = _admin(env)
    try:
        assert wait_until(lambda: len(dlq.entries()) == 1, 60, 0.5)
        [group] = admin.get("/v1/admin/dead-letters").json()
        assert group["event_id"] == poison.event_id and group["classifier"] == late
        assert group["reason"] == "permanent" and group["attempts"] == 1
        assert group["original_topic"] == env.bus.topic(TOPIC_REVIEW_REQUESTS)
        [entry_id] = group["ids"]
        shown = admin.get(f"/v1/admin/dead-letters/{entry_id}").json()
        assert "unknown classifier" in shown["error"] and poison.text in shown["payload"]

        # the operator fixes the cause: the classifier now exists, with its review project
        cfg, _ = env.api.services.tenants.create(ClassifierConfig(name=late, labels=LABELS, review_window=50))
        ensure_project(env.settings, env.api.services.tenants, cfg, env.projects)
        assert admin.post("/v1/admin/dead-letters/replay", json={"all": True}).json() == {"ids": [entry_id]}
        assert wait_until(lambda: _committed(env) == 2, 60, 0.5)  # poison + its replay
        project = env.api.services.tenants.get(late).label_studio_project_id
        assert project is not None
        assert wait_until(lambda: _task_count(env, project) == 1, 60, 0.5)
        assert dlq.entries() == []
        assert [e.status for e in dlq.entries(include_closed=True)] == ["replayed"]

        # replaying again is harmless: the worker dedupes by event id
        assert admin.post("/v1/admin/dead-letters/replay", json={"ids": [entry_id]}).status_code == 200
        assert wait_until(lambda: _committed(env) == 3, 60, 0.5)
        assert _task_count(env, project) == 1
        item = env.queue().load(late, text_hash(late, poison.text))
        assert item is not None and item.event_ids.count(poison.event_id) == 1
    finally:
        worker.halt()


def test_purged_dead_letter_leaves_the_open_list(review_env: ReviewEnv) -> None:
    env = review_env
    env.publish(env.request("   "))  # empty text: permanent
    worker = WorkerThread(env.settings).start()
    dlq = DeadLetters(env.settings, env.store)
    admin = _admin(env)
    try:
        assert wait_until(lambda: len(dlq.entries()) == 1, 60, 0.5)
        [entry] = dlq.entries()
        assert entry.reason == "permanent" and "empty text" in entry.error
        assert admin.post("/v1/admin/dead-letters/purge", json={"ids": ["9-9"]}).status_code == 404
        assert admin.post("/v1/admin/dead-letters/purge", json={}).status_code == 422
        assert admin.post("/v1/admin/dead-letters/purge", json={"ids": [entry.id]}).json() == {"ids": [entry.id]}
        assert admin.get("/v1/admin/dead-letters").json() == []
        [closed] = admin.get("/v1/admin/dead-letters", params={"closed": True}).json()
        assert closed["status"] == "purged"
        assert TestClient(admin.app).get("/v1/admin/dead-letters").status_code == 401
    finally:
        worker.halt()
