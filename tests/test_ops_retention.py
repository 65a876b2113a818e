"""Retention on the real object store and MLflow registry, with a controlled clock (``now`` passed in)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from typer.testing import CliRunner

from infra.objectstore import ObjectStore
from infra.predictions import PredictionRecord, PredictionStore
from infra.registry import Registry, configure_mlflow
from infra.settings import Settings, get_settings
from infra.tenants import ClassifierConfig, RetentionPolicy, TenantStore
from ops.retention import Retention, champion_history_key


def _fresh(settings: Settings) -> tuple[Settings, ObjectStore]:
    """A bucket of the test's own: prediction segments are shared by every classifier of a bucket."""
    s = settings.model_copy(update={"bucket": f"gc-{uuid.uuid4().hex[:10]}"})
    store = ObjectStore(s)
    store.ensure_bucket()
    return s, store


def _register_versions(settings: Settings, classifier: str, n: int) -> list[str]:
    import mlflow

    configure_mlflow(settings)
    mlflow.set_experiment(f"sift-{classifier}")
    registry = Registry(settings)
    versions = []
    for _ in range(n):
        with mlflow.start_run() as run:
            mlflow.log_dict({"stand-in": True}, "model/sift_model.json")
        versions.append(registry.register(classifier, run.info.run_id).version)
    return versions


def test_retention_pass_deletes_only_what_the_policy_no_longer_keeps(sift_settings: Settings, mlflow_server,
                                                                     tmp_path: Path, monkeypatch) -> None:
    settings, store = _fresh(sift_settings)
    tenants = TenantStore(store)
    alpha = f"alpha-{uuid.uuid4().hex[:6]}"
    beta = f"beta-{uuid.uuid4().hex[:6]}"
    tenants.save(ClassifierConfig(name=alpha, labels=["a", "b"], retention=RetentionPolicy(
        predictions_days=1, uploads_days=10, keep_versions=1)))
    tenants.save(ClassifierConfig(name=beta, labels=["a", "b"]))  # defaults: predictions 30 days

    predictions = PredictionStore(store)
    ids = [predictions.record(PredictionRecord(classifier=c, text=f"text {c}", label="a", confidence=0.9,
                                               scores={"a": 0.9, "b": 0.1}, model_version="1"))
           for c in (alpha, beta)]
    assert predictions.flush()
    predictions.close()

    uploads = f"feedback-uploads/{alpha}/"
    store.put_bytes(uploads + "done.csv", b"text,label\nx,a\n")
    store.put_json(uploads + "done.csv.report.json", {"status": "done"})
    store.put_bytes(uploads + "pending.csv", b"text,label\ny,b\n")  # never ingested: kept at any age
    store.put_bytes(f"feedback-uploads/{beta}/done.csv", b"text,label\nz,a\n")
    store.put_json(f"feedback-uploads/{beta}/done.csv.report.json", {"status": "done"})

    registry = Registry(settings)
    v = _register_versions(settings, alpha, 5)
    registry.set_champion(alpha, v[1])
    registry.set_version_tag(alpha, v[1], "parent_version", v[0])  # warm-started from v1
    store.put_json(champion_history_key(alpha), [{"version": v[1], "action": "promoted"}])
    cache = tmp_path / "cache"
    for version in (v[1], v[2], v[3]):
        (cache / alpha / version / "model").mkdir(parents=True)

    retention = Retention(settings, store, registry, cache_dir=cache)
    now = datetime.now(UTC)
    fresh = retention.run(now)
    assert fresh.prediction_segments_deleted == 0 and fresh.predictions_days == 1
    by = {c.classifier: c for c in fresh.classifiers}
    assert by[alpha].uploads_deleted == [] and by[beta].uploads_deleted == []
    # beyond the newest 1, only what the champion's lineage does not reference goes
    assert by[alpha].versions_deleted == [v[2], v[3]]
    assert set(by[alpha].versions_protected) == {v[0], v[1]}
    assert [r.version for r in registry.versions(alpha)] == [v[0], v[1], v[4]]
    assert registry.champion(alpha).version == v[1]
    assert by[alpha].cache_pruned == [v[2], v[3]] and sorted(p.name for p in (cache / alpha).iterdir()) == [v[1]]

    dry = retention.run(now + timedelta(days=2), dry_run=True)
    assert dry.prediction_segments_deleted == 1
    assert list(store.list_keys("predictions/")), "a dry run deletes nothing"

    # two days on: the shortest predictions policy (alpha's 1 day) applies to the shared segment
    later = retention.run(now + timedelta(days=2))
    assert later.prediction_segments_deleted == 1 and not list(store.list_keys("predictions/"))
    reader = PredictionStore(store)
    assert reader.get(beta, ids[1]) is None  # feedback by this id must now send text and label
    reader.close()
    assert list(store.list_keys(uploads)) == [uploads + "done.csv", uploads + "done.csv.report.json",
                                              uploads + "pending.csv"]

    # eleven days on: alpha's ingested upload and its report go, the pending file and beta's stay
    eleven = retention.run(now + timedelta(days=11))
    assert {c.classifier: c.uploads_deleted for c in eleven.classifiers}[alpha] == [
        uploads + "done.csv", uploads + "done.csv.report.json"]
    assert list(store.list_keys(uploads)) == [uploads + "pending.csv"]
    assert len(list(store.list_keys(f"feedback-uploads/{beta}/"))) == 2

    # the CLI runs the same pass; an unknown classifier is a clear error
    monkeypatch.setenv("SIFT_BUCKET", settings.bucket)
    get_settings.cache_clear()
    from sift.cli import app

    out = CliRunner().invoke(app, ["gc", "--dry-run", "--classifier", beta, "--now",
                                   (now + timedelta(days=100)).strftime("%Y-%m-%dT%H:%M:%S")])
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    assert report["dry_run"] and report["classifiers"][0]["uploads_deleted"] == [
        f"feedback-uploads/{beta}/done.csv", f"feedback-uploads/{beta}/done.csv.report.json"]
    assert len(list(store.list_keys(f"feedback-uploads/{beta}/"))) == 2
    missing = CliRunner().invoke(app, ["gc", "--classifier", "no-such-one"])
    assert missing.exit_code == 1 and "unknown classifier" in missing.output
