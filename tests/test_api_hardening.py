"""Bad input and abuse on the real app (S3, Kafka, MLflow, a trained model): every probe of issue 10
gets a clear 4xx, loses nothing, and fails nobody else's request."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from classifier.batcher import MicroBatcher
from classifier.engine import ServingEngine
from infra.objectstore import ObjectStore
from infra.settings import SECRETS, Settings
from infra.tenants import ClassifierConfig, RetrainPolicy, TenantCache, TenantStore
from sift.app import create_app
from tests.alert_hook import AlertHook
from tests.model_fixtures import register_champion

pytestmark = pytest.mark.timeout(300)
LABELS = ["finance", "sports", "weather"]
JSON = {"content-type": "application/json"}


@pytest.fixture
def api(sift_settings: Settings):
    """The real app with a classifier (no model needed for these checks) and its key."""
    # bad-key budget refills slowly here, so the count before the first 429 is exact
    settings = sift_settings.model_copy(update={"max_body_bytes": 64 * 1024, "max_upload_bytes": 256 * 1024,
                                                "auth_failure_per_s": 0.001})
    with TestClient(create_app(settings)) as client:
        tenants = client.app.state.services.tenants  # type: ignore[attr-defined]
        name = f"hard-{uuid.uuid4().hex[:8]}"
        cfg, key = tenants.create(ClassifierConfig(name=name, labels=LABELS))
        client.headers["x-api-key"] = key
        yield client, name, key, settings


def test_lone_surrogate_in_classify_is_422_naming_the_text(api) -> None:
    client, name, _, _ = api
    r = client.post(f"/v1/classifiers/{name}/classify", content=b'{"texts": ["oil up", "x \\ud800"]}', headers=JSON)
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith("texts[1] is not valid Unicode: lone surrogate")
    r = client.post(f"/v1/classifiers/{name}/classify", content=b'{"text": "\\udc00 bad"}', headers=JSON)
    assert r.status_code == 422 and r.json()["detail"].startswith("text is not valid Unicode"), r.text


@pytest.mark.parametrize("field", ["text", "label", "comment"])
def test_lone_surrogate_in_feedback_is_422(api, field: str) -> None:
    client, name, _, _ = api
    body = {"text": "rain tomorrow", "label": "weather", "verdict": "like", "comment": "ok"}
    raw = json.dumps(body).replace(f'"{body[field]}"', f'"{body[field]} \\ud83d"').encode()
    r = client.post(f"/v1/classifiers/{name}/feedback", content=raw, headers=JSON)
    assert r.status_code == 422, r.text
    # ours ("is not valid Unicode") or pydantic's for a length-constrained field ("a unicode string")
    detail = r.json()["detail"]
    assert detail.startswith(field) and "unicode" in detail.lower(), r.text


@pytest.mark.parametrize("body", [{"prediction_id": "", "verdict": "like"},
                                  {"prediction_id": "../../etc", "verdict": "like"},
                                  {"text": None, "label": "sports", "verdict": "like"}])
def test_bad_prediction_reference_is_422(api, body: dict) -> None:
    client, name, _, _ = api
    r = client.post(f"/v1/classifiers/{name}/feedback", json=body)
    assert r.status_code == 422, r.text


def test_any_key_bytes_are_401_never_500(api) -> None:
    client, name, _, settings = api
    for raw in (b"caf\xc3\xa9-key", b"\xff\xfe", "sk-\u00e9".encode("latin-1")):
        r = client.get("/v1/admin/classifiers", headers={"x-admin-key": raw})
        assert r.status_code == 401 and "malformed admin key" in r.json()["detail"], r.text
        r = client.post(f"/v1/classifiers/{name}/classify", json={"text": "hi"}, headers={"x-api-key": raw})
        assert r.status_code == 401 and r.json()["detail"] == "invalid API key", r.text
    r = client.get("/v1/admin/classifiers", headers={"x-admin-key": settings.admin_key + "x"})
    assert r.status_code == 403


def test_keys_are_checked_before_the_body_is_read(api) -> None:
    client, name, _, settings = api
    for path in (f"/v1/classifiers/{name}/classify", f"/v1/classifiers/{name}/feedback"):
        r = client.post(path, content=b"{not json", headers={**JSON, "x-api-key": ""})
        assert r.status_code == 401, r.text
        r = client.post(path, content=b"{not json", headers=JSON)  # with the key: now the body matters
        assert r.status_code == 400 and r.json()["detail"] == "malformed JSON body"
    r = client.post("/v1/admin/classifiers", content=b"{not json", headers=JSON)
    assert r.status_code == 401
    r = client.post("/v1/admin/classifiers", content=b"{not json", headers={**JSON, "x-admin-key": settings.admin_key})
    assert r.status_code == 400


def test_body_over_the_limit_is_413_before_parsing(api) -> None:
    client, name, _, settings = api
    url = f"/v1/classifiers/{name}/classify"
    big = b'{"text": "' + b"x" * (settings.max_body_bytes + 1) + b'"}'
    r = client.post(url, content=big, headers=JSON)  # declared Content-Length: refused unread
    assert r.status_code == 413, r.text
    assert r.json()["detail"] == (f"request body of {len(big)} bytes; the limit is {settings.max_body_bytes} "
                                  "(SIFT_MAX_BODY_BYTES)")
    # no key, no valid JSON, same answer: nothing was parsed
    assert client.post(url, content=b"{" * len(big), headers={**JSON, "x-api-key": ""}).status_code == 413

    pulled = []

    def chunks():  # streamed without a Content-Length: counted as it arrives
        for i in range(64):
            pulled.append(i)
            yield b"x" * 4096

    r = client.post(url, content=chunks(), headers=JSON)
    assert r.status_code == 413 and "over the limit" in r.json()["detail"], r.text

    # uploads have their own, larger cap
    upload = f"/v1/classifiers/{name}/feedback/batch"
    ok = b"text,label\n" + b"".join(b"rain and wind tomorrow %d,weather\n" % i for i in range(3000))
    assert settings.max_body_bytes < len(ok) < settings.max_upload_bytes
    r = client.post(upload, files={"file": ("ok.csv", ok)})
    assert r.status_code == 202 and r.json()["rows_accepted"] == 3000, r.text
    r = client.post(upload, files={"file": ("big.csv", ok * 4)})
    assert r.status_code == 413 and f"the limit is {settings.max_upload_bytes}" in r.json()["detail"]


def test_wrong_keys_from_one_address_get_429(api) -> None:
    client, name, key, settings = api
    codes = [client.post(f"/v1/classifiers/{name}/classify", json={"text": "x"},
                         headers={"x-api-key": f"sk-guess-{i}"}).status_code for i in range(300)]
    assert set(codes) == {401, 429}
    assert codes.index(429) == settings.auth_failure_burst  # the burst, then refused
    r = client.post(f"/v1/classifiers/{name}/classify", json={"text": "x"}, headers={"x-api-key": "sk-again"})
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "invalid keys from this address" in r.json()["detail"]
    # the admin API shares the budget: guessing the admin key is refused too
    assert client.get("/v1/admin/classifiers", headers={"x-admin-key": "guess"}).status_code == 429


def test_per_key_rate_limit(api) -> None:
    client, name, key, settings = api
    services = client.app.state.services  # type: ignore[attr-defined]
    r = client.patch(f"/v1/admin/classifiers/{name}", json={"rate_limit_per_s": 0.01, "rate_limit_burst": 3},
                     headers={"x-admin-key": settings.admin_key})
    assert r.status_code == 200 and (r.json()["rate_limit_per_s"], r.json()["rate_limit_burst"]) == (0.01, 3)
    url = f"/v1/classifiers/{name}/feedback"
    body = {"text": "rain tomorrow", "label": "weather", "verdict": "like"}
    codes = [client.post(url, json=body).status_code for _ in range(5)]
    assert codes == [202, 202, 202, 429, 429]
    r = client.post(url, json=body)
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "rate limit" in r.json()["detail"]
    # another tenant's key has its own bucket
    _, other_key = services.tenants.create(ClassifierConfig(name=f"{name}-b", labels=LABELS))
    r = client.post(f"/v1/classifiers/{name}-b/feedback", json=body, headers={"x-api-key": other_key})
    assert r.status_code == 202, r.text


def test_production_refuses_local_default_secrets(tmp_path: Path) -> None:
    with pytest.raises(ValidationError) as err:
        Settings(env="production", admin_key="a-real-admin-key")
    message = str(err.value)
    assert "SIFT_S3_SECRET_KEY" in message and "SIFT_WEBHOOK_SECRET" in message
    assert "SIFT_ADMIN_KEY" not in message
    Settings(env="production", **{name: f"real-{name}" for name in SECRETS})  # all set: starts

    env = {k: v for k, v in os.environ.items() if not k.startswith("SIFT_")} | {"SIFT_ENV": "production",
                                                                                "SIFT_DATA_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-m", "sift.cli", "serve", "--port", "1"], env=env, cwd=tmp_path.parent,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "SIFT_ENV=production but" in proc.stdout + proc.stderr


def test_one_bad_payload_fails_only_itself_in_a_shared_batch() -> None:
    batches: list[list[str]] = []

    def encode(texts: list[str]) -> list[bytes]:  # what a tokenizer does first: fails on a lone surrogate
        batches.append(list(texts))
        return [t.encode("utf-8") for t in texts]

    async def run() -> list[object]:
        batcher: MicroBatcher[str, bytes] = MicroBatcher(encode, ThreadPoolExecutor(1), max_batch=8, max_wait_s=0)
        try:
            return await asyncio.gather(batcher.submit_many(["a"]), batcher.submit_many(["b \ud800"]),
                                        batcher.submit_many(["c", "d"]), return_exceptions=True)
        finally:
            assert batcher.batch_failures == 1
            await batcher.aclose()

    a, bad, cd = asyncio.run(run())
    assert batches[0] == ["a", "b \ud800", "c", "d"]  # they shared a batch
    assert a == [b"a"] and cd == [b"c", b"d"]
    assert isinstance(bad, UnicodeEncodeError)


def test_concurrent_requests_with_a_bad_one_on_a_real_model(sift_settings, mlflow_server, tiny_model_dir,
                                                            tiny_examples) -> None:
    """A real model behind the engine: a text the tokenizer cannot take fails alone."""
    engine = ServingEngine(lambda name: ("1", str(tiny_model_dir)), max_batch=16, max_wait_s=0.05)

    async def run() -> list[object]:
        try:
            await engine.ensure_loaded("t")
            good = [engine.classify("t", [text]) for text in tiny_examples.values()]
            return await asyncio.gather(*good[:2], engine.classify("t", ["bad \ud800 text"]), *good[2:],
                                        return_exceptions=True)
        finally:
            await engine.aclose()

    results = asyncio.run(run())
    assert isinstance(results[2], Exception), results[2]
    labels = [r[0].label for i, r in enumerate(results) if i != 2]  # type: ignore[index]
    assert labels == list(tiny_examples)
    assert engine.slots["t"].batcher.batch_failures >= 1


def test_concurrent_http_requests_with_a_bad_one(sift_settings, mlflow_server, tiny_model_dir,
                                                 tiny_examples) -> None:
    tenants = TenantStore(ObjectStore(sift_settings))
    tenants.store.ensure_bucket()
    name = f"conc-{uuid.uuid4().hex[:8]}"
    _, key = tenants.create(ClassifierConfig(name=name, labels=LABELS))
    register_champion(sift_settings, name, Path(tiny_model_dir))
    settings = sift_settings.model_copy(update={"batch_max_wait_ms": 50.0})
    with TestClient(create_app(settings)) as client:
        client.headers["x-api-key"] = key
        url = f"/v1/classifiers/{name}/classify"
        assert client.post(url, json={"text": "warm up"}).status_code == 200
        bodies = [json.dumps({"text": t}).encode() for t in tiny_examples.values()]
        bodies.insert(1, b'{"texts": ["fine text", "x \\ud800"]}')
        with ThreadPoolExecutor(len(bodies)) as pool:
            responses = list(pool.map(lambda b: client.post(url, content=b, headers=JSON), bodies))
    codes = [r.status_code for r in responses]
    assert codes == [200, 422, 200, 200], [r.text for r in responses]
    assert [r.json()["results"][0]["label"] for r in responses if r.status_code == 200] == list(tiny_examples)
    assert responses[1].json()["detail"].startswith("texts[1] is not valid Unicode")


def test_readyz_is_503_naming_a_champion_that_failed_to_load(own_bucket_settings, mlflow_server, tmp_path) -> None:
    sift_settings = own_bucket_settings
    tenants = TenantStore(ObjectStore(sift_settings))
    tenants.store.ensure_bucket()
    name = f"broken-{uuid.uuid4().hex[:8]}"
    team = AlertHook()
    tenants.create(ClassifierConfig(name=name, labels=LABELS, retrain=RetrainPolicy(alert_webhook_url=team.url)))
    junk = tmp_path / "junk-model"
    junk.mkdir()
    (junk / "sift_model.json").write_text("not a model")
    register_champion(sift_settings, name, junk)
    try:  # the bucket is this test's, but the registry is the session's: leave no broken champion behind
        with TestClient(create_app(sift_settings)) as client:
            admin = {"x-admin-key": sift_settings.admin_key}
            ready = client.get("/readyz")
            while ready.json()["status"] == "loading models":  # the preload thread's marker; bounded by the timeout
                ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["status"] == "not ready", ready.text
            assert ready.json()["failed_count"] >= 1 and "failed" not in ready.json()  # anonymous: no names
            assert name not in ready.text
            detailed = client.get("/readyz", headers=admin).json()
            assert name in detailed["failed"] and detailed["failed"][name]
            assert client.get("/healthz").json() == {"status": "ok"}
            scraped = client.get("/metrics", headers=admin).text  # what the SiftChampionNotLoaded alert reads
            failures = [line for line in scraped.splitlines()
                        if line.startswith(f'sift_model_load_failures_total{{classifier="{name}"}}')]
            assert failures and float(failures[0].split()[-1]) >= 1, failures
            # the classifier's team hears of it (once per version: the hook remembers what it told)
            [alert] = team.wait_for("model_load_failed", name)
            assert alert["source"] == "sift-api" and alert["details"]["version"] in alert["text"]
    finally:
        team.close()
        tenants.delete(name)


def test_tenant_cache_is_bounded_and_forgets_misses_quickly(sift_settings) -> None:
    tenants = TenantStore(ObjectStore(sift_settings))
    tenants.store.ensure_bucket()
    cache = TenantCache(tenants, ttl_s=3600, max_entries=3, negative_ttl_s=0)
    for i in range(10):
        assert cache.key_owner(f"sk-unknown-{i}") is None
    assert len(cache._owners) == 3
    name = f"cache-{uuid.uuid4().hex[:8]}"
    assert cache.get(name) is None  # a miss, cached for negative_ttl_s (0 here)
    cfg, key = tenants.create(ClassifierConfig(name=name, labels=LABELS))
    assert cache.get(name) is not None and cache.key_owner(key) == name  # the miss was not kept
    tenants.delete(name)
    assert cache.get(name) is not None and cache.key_owner(key) == name  # hits live for ttl_s
