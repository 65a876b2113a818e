"""Drift on real services: a version trained through ``train_and_register`` carries its evaluation
reference in MLflow; stored prediction segments in S3 are the live side; the alert reaches a webhook."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY

from infra.http import Services
from infra.objectstore import ObjectStore
from infra.predictions import PredictionRecord, PredictionStore
from infra.registry import Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, DriftPolicy, RetrainPolicy, TenantStore
from model.runtime import LoadedModel
from ops.api import drift_router
from ops.drift import Drift, psi
from tests.alert_hook import AlertHook
from tests.model_fixtures import TINY_LABELS, TINY_TRAIN, topic_rows


def test_psi_is_zero_for_equal_distributions_and_grows_with_the_shift() -> None:
    assert psi([0.5, 0.5], [0.5, 0.5]) == 0
    assert 0 < psi([0.5, 0.5], [0.6, 0.4]) < psi([0.5, 0.5], [0.9, 0.1])
    assert psi([1.0, 0.0], [0.0, 1.0]) > 5  # an empty bin is floored, not infinite


def test_drift_of_the_champion_against_its_evaluation_reference(sift_settings: Settings, mlflow_server) -> None:
    from retrain.tracking import train_and_register, train_spec

    settings = sift_settings.model_copy(update={"bucket": f"drift-{uuid.uuid4().hex[:10]}"})
    store = ObjectStore(settings)
    store.ensure_bucket()
    hook = AlertHook()
    name = f"drift-{uuid.uuid4().hex[:6]}"
    cfg = ClassifierConfig(name=name, labels=TINY_LABELS, retrain=RetrainPolicy(alert_webhook_url=hook.url),
                           drift=DriftPolicy(window_hours=5, min_predictions=30, alert_psi=0.2))
    TenantStore(store).save(cfg)
    registry = Registry(settings)
    drift = Drift(settings, store, registry)
    try:
        assert drift.check(name).status == "no champion"
        eval_rows = topic_rows(15, seed=2)
        reg = train_and_register(cfg, topic_rows(40, seed=1), registry=registry, eval_rows=eval_rows,
                                 spec=train_spec(cfg, **TINY_TRAIN), progress=False)
        assert reg.is_champion
        model = LoadedModel.load(registry.download(registry.champion(name), settings.model_cache_dir),
                                 version=reg.version)

        now = datetime.now(UTC)
        writer = PredictionStore(store)

        def record(texts: list[str], at: datetime, version: str = reg.version) -> None:
            for text, (label, conf) in zip(texts, model.predict(texts), strict=True):
                writer.record(PredictionRecord(classifier=name, text=text, label=label, confidence=conf,
                                               scores={label: conf}, model_version=version, created_at=at))

        # 12 h ago the champion saw texts like its evaluation set; another version's skewed records
        # and another classifier's are not the champion's and do not count
        record([r.text for r in eval_rows], now - timedelta(hours=12))
        weather = [r.text for r in topic_rows(30, seed=5) if r.label == "weather"]
        record(weather, now - timedelta(hours=12), version="999")
        writer.record(PredictionRecord(classifier="someone-else", text="x", label="sports", confidence=0.9,
                                       scores={}, model_version=reg.version, created_at=now - timedelta(hours=12)))
        # in the last hour it sees only weather reports
        record(weather, now - timedelta(hours=1))
        assert writer.flush()
        writer.close()

        stable = drift.check(name, now - timedelta(hours=10))
        assert stable.status == "ok" and stable.predictions == len(eval_rows)
        assert stable.label_psi is not None and stable.label_psi < 0.01
        assert stable.confidence_psi is not None and stable.confidence_psi < 0.2
        assert not stable.alerted and hook.bodies == []

        shifted = drift.check(name, now)
        assert shifted.status == "drift" and shifted.predictions == len(weather)
        assert shifted.current.label_share["weather"] == 1.0
        assert shifted.label_psi > 0.2 and shifted.alerted
        assert REGISTRY.get_sample_value("sift_drift_psi", {"classifier": name, "kind": "label"}) == shifted.label_psi
        [body] = hook.bodies
        assert body["classifier"] == name and body["kind"] == "drift" and body["source"] == "sift-drift"
        assert body["text"].startswith(f"Sift drift {name}: ")  # Slack-style receivers show this line
        assert body["details"]["champion_version"] == reg.version and "label PSI" in body["message"]

        # too few predictions: no score rather than a noisy one
        quiet = drift.check(name, now - timedelta(hours=30))
        assert quiet.status == "too few predictions" and quiet.label_psi is None

        # the admin API reports the same, without alerting again; an unknown classifier is a 404
        app = FastAPI()
        app.state.services = Services.from_settings(settings)
        app.include_router(drift_router)
        admin = TestClient(app, headers={"x-admin-key": settings.admin_key})
        got = admin.get(f"/v1/admin/drift/{name}").json()
        assert got["status"] == "drift" and got["label_psi"] == shifted.label_psi
        assert admin.get("/v1/admin/drift/no-such-classifier").status_code == 404
        assert TestClient(app).get(f"/v1/admin/drift/{name}").status_code in (401, 403)
        assert len(hook.bodies) == 1
    finally:
        hook.close()
