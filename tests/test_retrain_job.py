"""Retrain jobs on the real stores: S3 (SeaweedFS), MLflow registry, Kafka (Tansu); real tiny training."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from infra.events import ModelEvent
from infra.objectstore import ObjectStore
from infra.registry import Registry
from infra.settings import Settings
from retrain import paths
from retrain.bless import load_verdict
from retrain.job import JobRecord, load_job, run_retrain_job
from tests.alert_hook import AlertHook
from tests.model_fixtures import topic_rows
from tests.retrain_helpers import FAST_OPTIONS, reviewed, seed_classifier, weak_model_dir, write_reviewed
from tests.services import KafkaService, MlflowService, S3Service, exported, service_settings


@pytest.fixture
def published() -> list[ModelEvent]:
    return []


@dataclass
class PromotedJob:
    """One retrain job that promoted a candidate over a weak champion; the tests below read it."""

    settings: Settings
    classifier: str
    champion_before: str
    record: JobRecord
    published: list[ModelEvent]

    @property
    def store(self) -> ObjectStore:
        return ObjectStore(self.settings)

    @property
    def registry(self) -> Registry:
        return Registry(self.settings)


@pytest.fixture(scope="module")
def promoted(s3_server: S3Service, _kafka_broker_session: KafkaService, mlflow_server: MlflowService,
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[PromotedJob]:
    """Trains once for the module: two candidates on 36 reviewed labels + the seed, champion weak."""
    tmp = tmp_path_factory.mktemp("promoted")
    settings = service_settings(s3_server, _kafka_broker_session, tmp / "sift-data", mlflow=mlflow_server)
    with exported(settings):
        cfg, _, champion = seed_classifier(settings, weak_model_dir(tmp))
        write_reviewed(settings, reviewed(cfg.name, topic_rows(12, seed=3)))
        events: list[ModelEvent] = []
        record = run_retrain_job(settings, cfg.name, FAST_OPTIONS, publish=events.append)
        yield PromotedJob(settings, cfg.name, champion, record, events)


def test_a_better_candidate_is_promoted_and_announced(promoted: PromotedJob) -> None:
    record, registry = promoted.record, promoted.registry
    assert record.status == "promoted", record.reason
    assert record.champion_before == promoted.champion_before
    assert {c.name for c in record.candidates} == {"warm", "fresh"}
    assert all(c.version and c.error is None for c in record.candidates)
    new = registry.champion(promoted.classifier)
    assert new is not None and new.version == record.selected_version != promoted.champion_before
    assert registry.get_alias(promoted.classifier, "previous-champion").version == promoted.champion_before
    assert [(e.action, e.version) for e in promoted.published] == [("promoted", new.version)]
    assert record.verdict.blessed and record.verdict.gain > 0


def test_the_dataset_version_is_stored_and_evaluation_never_trains(promoted: PromotedJob) -> None:
    ds, store = promoted.record.dataset, promoted.store
    assert ds is not None and ds.reviewed_labels == 36 and ds.seed_rows == 120
    assert sum(ds.train_counts.values()) + sum(ds.eval_counts.values()) == len(
        {r.text for r in topic_rows(40, seed=1) + topic_rows(12, seed=3)})
    stored = store.get_json(f"datasets/{promoted.classifier}/versions/{ds.version_id}/version.json")
    assert stored["train_fingerprint"] == ds.train_fingerprint
    train_texts = {json.loads(x)["text"] for x in store.get_bytes(ds.train_key).decode().splitlines()}
    eval_texts = {json.loads(x)["text"] for x in store.get_bytes(ds.eval_key).decode().splitlines()}
    assert train_texts and eval_texts and not train_texts & eval_texts
    assert store.get_json(paths.validation_report(promoted.classifier, promoted.record.job_id))["ok"] is True


def test_every_candidate_carries_its_lineage(promoted: PromotedJob) -> None:
    record, registry, name = promoted.record, promoted.registry, promoted.classifier
    ds = record.dataset
    assert ds is not None
    for cand in record.candidates:
        tags = registry.version_tags(name, cand.version)
        assert tags["dataset_version"] == ds.version_id
        assert tags["dataset_fingerprint"] == ds.train_fingerprint
        assert tags["run_id"] == cand.run_id
        assert tags["sift.blessed"] in {"true", "false"} and tags["sift.bless_reason"]
        assert tags["sift.bless_champion_version"] == promoted.champion_before
        if cand.name == "warm":
            assert tags["parent_version"] == promoted.champion_before
        run = registry.run(cand.run_id)
        assert run.data.tags["sift.dataset_version"] == ds.version_id
        assert run.data.tags["sift.job_id"] == record.job_id
        assert "bless.macro_f1" in run.data.metrics
        artifacts = set(registry.list_artifacts(cand.run_id, "report"))
        assert {"report/confusion.png", "report/learning_curve.png", "report/verdict.json"} <= artifacts
        assert registry.list_artifacts(cand.run_id, "dataset") == ["dataset/version.json"]
        verdict = load_verdict(promoted.store, name, cand.version)
        assert verdict is not None and verdict.selected == (cand.version == record.selected_version)


def test_the_job_record_is_stored_with_its_phases(promoted: PromotedJob) -> None:
    record = promoted.record
    assert load_job(promoted.store, promoted.classifier, record.job_id).status == "promoted"
    phases = [p.name for p in record.phases]
    assert phases[:3] == ["assemble", "validate", "load_champion"] and phases[-1] == "promote"


def test_the_promoted_version_ships_its_checked_serving_graph(promoted: PromotedJob, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Packaged once by the job, opened by a replica: loading the new champion runs no ONNX export."""
    import torch

    from classifier.engine import ServingEngine

    record, registry = promoted.record, promoted.registry
    phases = [p.name for p in record.phases]
    assert record.serving_graph == "model/onnx/model.int8.onnx"
    assert phases.index("bless") < phases.index("package") < phases.index("promote")
    champion = registry.champion(promoted.classifier)
    assert champion is not None and champion.version == record.selected_version
    model_dir = registry.download(champion, cache_dir=tmp_path / "replica-cache")
    assert (model_dir / "onnx" / "model.int8.onnx").is_file()

    def no_export(*args, **kwargs):  # noqa: ANN002, ANN003
        raise AssertionError("the replica exported although the version ships its graph")

    monkeypatch.setattr(torch.onnx, "export", no_export)
    served = ServingEngine(lambda name: None, runtime="onnx", quantize="int8").load_model(
        promoted.classifier, champion.version, str(model_dir))
    assert served.backend == "onnx-int8"


def test_the_candidates_trained_side_by_side(promoted: PromotedJob) -> None:
    """SIFT_RETRAIN_PARALLEL_CANDIDATES (default): with 2+ cores one `train` phase, and the candidates'
    MLflow runs overlap; on one core they train in turn."""
    record, registry = promoted.record, promoted.registry
    assert all(c.train_seconds and c.version for c in record.candidates) and len(record.candidates) == 2
    a, b = (registry.run(c.run_id).info for c in record.candidates)
    phases = [p.name for p in record.phases]
    if (os.cpu_count() or 1) > 1:
        assert "train" in phases and a.start_time < b.end_time and b.start_time < a.end_time, (phases, a, b)
    else:
        assert {"train:warm", "train:fresh"} <= set(phases)
        assert a.end_time <= b.start_time or b.end_time <= a.start_time


def test_the_operator_sees_the_job_in_models_list_and_report(promoted: PromotedJob, tmp_path: Path) -> None:
    """`sift models list / report` as an operator runs them: metrics, verdict, lineage, PNGs downloaded."""
    from typer.testing import CliRunner

    from retrain.cli import app

    record, name, champion = promoted.record, promoted.classifier, promoted.champion_before
    new = record.selected_version
    runner = CliRunner()
    with exported(promoted.settings):
        listed_out = runner.invoke(app, ["models", "list", name])
        out = runner.invoke(app, ["models", "report", name, new, "--out", str(tmp_path / "reports")])
    assert listed_out.exit_code == 0, listed_out.output
    listed = {m["version"]: m for m in json.loads(listed_out.output)}
    assert listed[new]["aliases"] == ["champion"] and listed[champion]["aliases"] == ["previous-champion"]
    assert out.exit_code == 0, out.output
    assert "blessed: True" in out.output and f"dataset version: {record.dataset.version_id}" in out.output
    assert "/#/experiments/" in out.output
    selected = next(c for c in record.candidates if c.version == new)
    if selected.name == "warm":
        assert f"parent version:  {champion}" in out.output
    pngs = [line.strip() for line in out.output.splitlines() if line.strip().endswith(".png")]
    assert {Path(p).name for p in pngs} == {"confusion.png", "learning_curve.png", "reliability.png"}
    assert "temperature" in out.output and "ece_after" in out.output  # calibration, as the report shows it
    assert all(Path(p).stat().st_size > 1000 for p in pngs)


def test_candidate_below_margin_is_not_promoted_and_reason_recorded(sift_settings, mlflow_server, tiny_model_dir,
                                                                    published):
    cfg, _, champion = seed_classifier(sift_settings, tiny_model_dir, promotion_margin=0.5)
    write_reviewed(sift_settings, reviewed(cfg.name, topic_rows(10, seed=4)))
    registry = Registry(sift_settings)

    record = run_retrain_job(sift_settings, cfg.name, FAST_OPTIONS, publish=published.append)

    assert record.status == "not_promoted", record.reason
    assert "below the promotion margin 0.5000" in record.reason
    assert registry.champion(cfg.name).version == champion
    assert published == []
    v = record.verdict
    assert v is not None and not v.blessed and v.champion_version == champion and v.margin == 0.5
    tags = registry.version_tags(cfg.name, v.candidate_version)
    assert tags["sift.blessed"] == "false"
    assert "below the promotion margin" in tags["sift.bless_reason"]
    stored = load_verdict(ObjectStore(sift_settings), cfg.name, v.candidate_version)
    assert stored is not None and stored.reason == v.reason


def _failures(classifier: str, stage: str) -> float:
    return REGISTRY.get_sample_value("sift_retrain_failures_total", {"classifier": classifier, "stage": stage}) or 0


def test_failing_data_check_stops_the_job_and_alerts(sift_settings, mlflow_server, tiny_model_dir, published):
    hook = AlertHook()
    cfg, _, champion = seed_classifier(sift_settings, tiny_model_dir, min_examples_per_label=40,
                                       alert_webhook_url=hook.url)
    events = reviewed(cfg.name, topic_rows(3, seed=5))
    events[0] = events[0].model_copy(update={"label": "politics"})
    write_reviewed(sift_settings, events)
    registry, store = Registry(sift_settings), ObjectStore(sift_settings)
    versions_before = len(registry.versions(cfg.name))
    try:
        record = run_retrain_job(sift_settings, cfg.name, FAST_OPTIONS, publish=published.append)
    finally:
        hook.close()

    assert record.status == "data_rejected"
    failed = {c.name for c in record.validation.checks if not c.passed}
    assert {"unknown_labels", "too_few_examples"} <= failed
    stored = store.get_json(paths.validation_report(cfg.name, record.job_id))
    assert stored["ok"] is False
    assert any(c["name"] == "unknown_labels" and "politics" in c["message"] for c in stored["checks"])
    # nothing trained, nothing promoted: the champion keeps serving
    assert len(registry.versions(cfg.name)) == versions_before
    assert registry.champion(cfg.name).version == champion and published == []
    assert _failures(cfg.name, "validate") == 1
    alerts = [a for a in hook.bodies if a["classifier"] == cfg.name]
    assert [(a["kind"], a["details"]["stage"]) for a in alerts] == [("retrain_failed", "validate")]
    assert alerts[0]["text"].startswith(f"Sift retrain failed {cfg.name}: failed at validate")
    assert "the champion keeps serving" in record.reason
