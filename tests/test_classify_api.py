"""Classify API end to end on real parts: S3 tenant store, MLflow registry (S3 artifacts), a trained model."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from infra.objectstore import ObjectStore
from infra.tenants import ClassifierConfig, TenantStore
from sift.app import create_app
from tests.model_fixtures import document, register_champion


@pytest.fixture
def served(own_bucket_settings, mlflow_server, tiny_model_dir):
    """A classifier whose champion is the tiny fine-tuned model, and a client of a fresh API process."""
    sift_settings = own_bucket_settings
    labels = json.loads((Path(tiny_model_dir) / "sift_model.json").read_text())["labels"]
    tenants = TenantStore(ObjectStore(sift_settings))
    tenants.store.ensure_bucket()
    name = f"clf-{uuid.uuid4().hex[:8]}"
    cfg, key = tenants.create(ClassifierConfig(name=name, labels=labels, threshold=0.5))
    # no model and cold start switched off: the 503 path
    other, other_key = tenants.create(ClassifierConfig(name=f"{name}-b", labels=labels, cold_start=False))
    version = register_champion(sift_settings, name, Path(tiny_model_dir))
    app = create_app(sift_settings)
    with TestClient(app) as client:
        client.headers["x-api-key"] = key
        yield {"client": client, "name": name, "key": key, "other": other.name, "other_key": other_key,
               "version": version, "labels": labels, "settings": sift_settings}


def url(name: str) -> str:
    return f"/v1/classifiers/{name}/classify"


def test_classifies_clearly_separable_texts(served, tiny_examples):
    c, name = served["client"], served["name"]
    for label, text in tiny_examples.items():
        r = c.post(url(name), json={"text": text})
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["label"] == label, (text, res)
        assert res["model_version"] == served["version"]
        assert set(res["scores"]) == set(served["labels"])
        assert abs(sum(res["scores"].values()) - 1) < 1e-4
        assert res["confidence"] == max(res["scores"].values())
        assert len(res["prediction_id"]) == 32

    r = c.post(url(name), json={"texts": list(tiny_examples.values())})
    assert r.status_code == 200
    assert [x["label"] for x in r.json()["results"]] == list(tiny_examples)


def test_auth(served):
    c, name = served["client"], served["name"]
    r = c.post(url(name), json={"text": "hello"}, headers={"x-api-key": ""})
    assert r.status_code == 401 and "missing API key" in r.json()["detail"]
    r = c.post(url(name), json={"text": "hello"}, headers={"x-api-key": "sk-nope"})
    assert r.status_code == 401 and r.json()["detail"] == "invalid API key"
    r = c.post(url(name), json={"text": "hello"}, headers={"x-api-key": served["other_key"]})
    assert r.status_code == 403 and "not allowed" in r.json()["detail"]
    r = c.post(url("no-such-classifier"), json={"text": "hello"})
    assert r.status_code == 404 and "unknown classifier" in r.json()["detail"]


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"text": ""}, 422, "text is empty"),
        ({"text": "   \n"}, 422, "text is empty"),
        ({"texts": []}, 422, "at least one text"),
        ({"texts": ["fine", ""]}, 422, "texts[1] is empty"),
        ({"text": 42}, 422, "text: Input should be a valid string"),
        ({"texts": "not a list"}, 422, "texts: Input should be a valid list"),
        ({}, 422, "exactly one of 'text'"),
        ({"text": "a", "texts": ["b"]}, 422, "exactly one of 'text'"),
    ],
)
def test_bad_input(served, body, status, message):
    r = served["client"].post(url(served["name"]), json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_limits_and_malformed_json(served):
    c, name, s = served["client"], served["name"], served["settings"]
    r = c.post(url(name), json={"text": "x" * (s.max_text_chars + 1)})
    assert r.status_code == 413 and r.json()["detail"] == (
        f"text has {s.max_text_chars + 1} characters; the limit is {s.max_text_chars} (SIFT_MAX_TEXT_CHARS)")
    r = c.post(url(name), json={"texts": ["a text"] * (s.max_batch_texts + 1)})
    assert r.status_code == 413 and f"the limit is {s.max_batch_texts} (SIFT_MAX_BATCH_TEXTS)" in r.json()["detail"]
    r = c.post(url(name), content=b'{"text": "unterminated', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"] == "malformed JSON body"


def test_a_maximum_size_document_is_classified_by_its_end_and_stored_whole(served, tiny_examples):
    """A text of SIFT_MAX_TEXT_CHARS characters whose topic sits only in its last sentence: the served
    head_tail window finds it, and the stored prediction (what feedback and review read) keeps all of it."""
    c, name, s = served["client"], served["name"], served["settings"]
    doc = document(tiny_examples["weather"], s.max_text_chars)
    assert len(doc) == s.max_text_chars
    r = c.post(url(name), json={"text": doc})
    assert r.status_code == 200, r.text
    (res,) = r.json()["results"]
    assert res["label"] == "weather", res
    predictions = c.app.state.services.predictions
    assert predictions.flush()
    assert predictions.get(name, res["prediction_id"]).text == doc


def test_a_new_classifier_answers_from_label_prototypes_and_routes_its_doubts(served, tiny_examples):
    """Created through the admin API with labels and descriptions only: it serves at once, and a text it
    cannot place is routed to review."""
    c = served["client"]
    admin = {"x-admin-key": served["settings"].admin_key}
    name = f"cold-{uuid.uuid4().hex[:8]}"
    r = c.post("/v1/admin/classifiers", headers=admin, json={
        "name": name, "labels": list(tiny_examples), "threshold": 0.6,
        "label_descriptions": {"finance": "money, banks, markets and company results"}})
    assert r.status_code == 201, r.text
    key = r.json()["api_key"]
    for label, text in tiny_examples.items():
        r = c.post(url(name), json={"text": text}, headers={"x-api-key": key})
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        assert res["label"] == label and res["model_version"].startswith("prototype-"), res
    r = c.post(url(name), json={"text": "zzqx"}, headers={"x-api-key": key})  # no label fits (0.44 here)
    (res,) = r.json()["results"]
    assert res["confidence"] < 0.6 and res["review_requested"] is True, res
    bad = c.post("/v1/admin/classifiers", headers=admin, json={
        "name": f"{name}-x", "labels": ["a", "b"], "label_descriptions": {"zzz": "not a label"}})
    assert bad.status_code == 422 and "labels the classifier does not have" in bad.text


def test_no_model_is_503(served):
    # the second classifier exists but has no registered model
    c = served["client"]
    r = c.post(url(served["other"]), json={"text": "hello"}, headers={"x-api-key": served["other_key"]})
    assert r.status_code == 503
    assert "has no model yet" in r.json()["detail"]
    assert r.headers["retry-after"] == "5"


def test_ops_endpoints(served):
    c, name = served["client"], served["name"]
    assert c.get("/healthz").json() == {"status": "ok"}
    assert c.post(url(name), json={"text": "some words"}).status_code == 200
    admin = {"x-admin-key": served["settings"].admin_key}
    deadline = time.monotonic() + 120
    while (ready := c.get("/readyz", headers=admin)).status_code == 503 and time.monotonic() < deadline:
        assert ready.json()["status"] == "loading models"
        time.sleep(0.5)
    assert ready.status_code == 200 and ready.json()["models"][name] == served["version"]
    # anonymous callers learn readiness, not tenant names
    assert c.get("/readyz").json() == {"status": "ready", "failed_count": 0}
    assert c.get("/metrics").status_code == 401
    metrics = c.get("/metrics", headers=admin).text
    assert f'sift_classify_requests_total{{classifier="{name}",status="200"}}' in metrics
    assert "sift_batch_size_bucket" in metrics
    assert f'sift_model_version{{classifier="{name}"}} {float(served["version"])}' in metrics
    spec = c.get("/openapi.json").json()
    assert "/v1/classifiers/{name}/classify" in spec["paths"]
    assert c.get("/docs").status_code == 200
