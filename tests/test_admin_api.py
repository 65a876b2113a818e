"""Admin API against the real S3 server: onboarding, validation, updates, keys, deletion."""

from __future__ import annotations

import uuid

import pytest
from fastapi.testclient import TestClient

from classifier.engine import ServingEngine
from sift.app import create_app


@pytest.fixture
def admin_client(sift_settings):
    app = create_app(sift_settings, engine=ServingEngine(lambda name: None))
    with TestClient(app) as client:
        client.headers["x-admin-key"] = sift_settings.admin_key
        yield client


def test_admin_key_required(admin_client):
    r = admin_client.get("/v1/admin/classifiers", headers={"x-admin-key": ""})
    assert r.status_code == 401 and "admin key" in r.json()["detail"]
    r = admin_client.get("/v1/admin/classifiers", headers={"x-admin-key": "wrong"})
    assert r.status_code == 403 and r.json()["detail"] == "invalid admin key"


def test_create_list_show_update_delete(admin_client):
    r = admin_client.post("/v1/admin/classifiers", json={"name": "adm-news", "labels": ["earn", "acq", "crude"],
                                                         "threshold": 0.7})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["api_key"].startswith("sk-adm-news-")
    assert body["classifier"]["labels"] == ["earn", "acq", "crude"]
    assert body["classifier"]["threshold"] == 0.7
    assert "sha256" not in r.text  # key hashes never leave the store

    names = [c["name"] for c in admin_client.get("/v1/admin/classifiers").json()]
    assert "adm-news" in names

    r = admin_client.patch("/v1/admin/classifiers/adm-news", json={"threshold": 0.45})
    assert r.status_code == 200 and r.json()["threshold"] == 0.45
    # stored durably: a new app (another replica) sees the update
    assert admin_client.get("/v1/admin/classifiers/adm-news").json()["threshold"] == 0.45

    r = admin_client.patch("/v1/admin/classifiers/adm-news", json={"threshold": 1.5})
    assert r.status_code == 422 and "threshold" in r.json()["detail"]
    r = admin_client.patch("/v1/admin/classifiers/adm-news", json={"review_sample_rate": 0.05})
    assert r.status_code == 200 and r.json()["review_sample_rate"] == 0.05 and r.json()["threshold"] == 0.45
    r = admin_client.patch("/v1/admin/classifiers/adm-news", json={"review_sample_rate": 2})
    assert r.status_code == 422 and "review_sample_rate" in r.json()["detail"]
    assert admin_client.get("/v1/admin/classifiers/adm-news").json()["review_sample_rate"] == 0.05

    r = admin_client.post("/v1/admin/classifiers/adm-news/keys")
    assert r.status_code == 201
    key_id = r.json()["key_id"]
    r = admin_client.delete(f"/v1/admin/classifiers/adm-news/keys/{key_id}")
    assert r.status_code == 204

    assert admin_client.delete("/v1/admin/classifiers/adm-news").status_code == 204
    r = admin_client.get("/v1/admin/classifiers/adm-news")
    assert r.status_code == 404 and "unknown classifier" in r.json()["detail"]


@pytest.mark.parametrize(
    ("payload", "status", "message"),
    [
        ({"name": "Bad Name", "labels": ["a", "b"]}, 422, "invalid classifier name"),
        ({"name": "x", "labels": ["a", "b"]}, 422, "invalid classifier name"),
        ({"name": "ok-name", "labels": ["only"]}, 422, "at least 2 labels"),
        ({"name": "ok-name", "labels": ["a", "a"]}, 422, "labels must be unique"),
        ({"name": "ok-name", "labels": ["a", "-b"]}, 422, "invalid label"),
        ({"name": "ok-name", "labels": "a,b"}, 422, "labels"),
        ({"name": "ok-name", "labels": ["a", "b"], "threshold": 0}, 422, "threshold"),
        ({"name": "ok-name", "labels": ["a", "b"], "review_sample_rate": 1.5}, 422, "review_sample_rate"),
        ({"name": "ok-name", "labels": ["a", "b"], "review_sample_rate": -0.1}, 422, "review_sample_rate"),
        ({"labels": ["a", "b"]}, 422, "name"),
    ],
)
def test_create_rejects_bad_input(admin_client, payload, status, message):
    r = admin_client.post("/v1/admin/classifiers", json=payload)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_duplicate_and_unknown(admin_client):
    assert admin_client.post("/v1/admin/classifiers", json={"name": "adm-dup", "labels": ["a", "b"]}).status_code == 201
    r = admin_client.post("/v1/admin/classifiers", json={"name": "adm-dup", "labels": ["a", "b"]})
    assert r.status_code == 409 and "already exists" in r.json()["detail"]
    assert admin_client.delete("/v1/admin/classifiers/adm-nobody").status_code == 404
    assert admin_client.patch("/v1/admin/classifiers/adm-nobody", json={"threshold": 0.5}).status_code == 404


def test_admin_onboarding_provisions_what_the_cli_does(sift_settings, label_studio):
    """POST /v1/admin/classifiers goes through the one onboarding path: config and key, the Kafka
    topics, the Label Studio project with its webhook, the project id stored in the config."""
    from kafka import KafkaConsumer

    from infra.bus import Bus
    from infra.events import ALL_TOPICS
    from review.labelstudio import WEBHOOK_PATH, ReviewProjects, project_title
    from tests.bus_helpers import isolated

    settings = isolated(sift_settings)  # a topic prefix nobody else provisioned
    name = f"adm-{uuid.uuid4().hex[:8]}"
    with TestClient(create_app(settings, engine=ServingEngine(lambda n: None))) as client:
        client.headers["x-admin-key"] = settings.admin_key
        r = client.post("/v1/admin/classifiers", json={"name": name, "labels": ["earn", "acq"]})
        assert r.status_code == 201, r.text
        assert r.json()["warnings"] == []
        project_id = r.json()["classifier"]["label_studio_project_id"]
        assert project_id is not None
        assert client.get(f"/v1/admin/classifiers/{name}").json()["label_studio_project_id"] == project_id

    projects = ReviewProjects.from_settings(settings)
    assert projects.project_exists(project_id, name)
    assert projects.find_project(name) == project_id and project_title(name) in projects.client.projects.get(
        project_id).title
    hooks = [h for h in projects.client.webhooks.list(project=str(project_id)) if h.project == project_id]
    assert [h.url for h in hooks] == [settings.public_api_url.rstrip("/") + WEBHOOK_PATH]

    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        assert {Bus(settings).topic(t) for t in ALL_TOPICS} <= consumer.topics()
    finally:
        consumer.close()
