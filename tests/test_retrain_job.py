"""Retrain jobs on the real stores: S3 (SeaweedFS), MLflow registry, Kafka (Tansu); real tiny training."""

from __future__ import annotations

import http.server
import json
import threading
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from infra.events import ModelEvent
from infra.objectstore import ObjectStore
from infra.registry import Registry
from retrain import paths
from retrain.bless import load_verdict
from retrain.job import load_job, run_retrain_job
from tests.model_fixtures import topic_rows
from tests.retrain_helpers import FAST_OPTIONS, reviewed, seed_classifier, weak_model_dir, write_reviewed


@pytest.fixture
def published() -> list[ModelEvent]:
    return []


def test_retrain_registers_versions_with_lineage_and_promotes(sift_settings, mlflow_server, tmp_path, published):
    cfg, _, champion = seed_classifier(sift_settings, weak_model_dir(tmp_path))
    write_reviewed(sift_settings, reviewed(cfg.name, topic_rows(12, seed=3)))
    store, registry = ObjectStore(sift_settings), Registry(sift_settings)

    record = run_retrain_job(sift_settings, cfg.name, FAST_OPTIONS, publish=published.append)

    assert record.status == "promoted", record.reason
    assert record.champion_before == champion
    assert {c.name for c in record.candidates} == {"warm", "fresh"}
    assert all(c.version and c.error is None for c in record.candidates)
    new = registry.champion(cfg.name)
    assert new is not None and new.version == record.selected_version != champion
    assert registry.get_alias(cfg.name, "previous-champion").version == champion
    assert [(e.action, e.version) for e in published] == [("promoted", new.version)]

    # dataset version: stored, counted, and the eval set is disjoint from training
    ds = record.dataset
    assert ds is not None and ds.reviewed_labels == 36 and ds.seed_rows == 120
    assert sum(ds.train_counts.values()) + sum(ds.eval_counts.values()) == len(
        {r.text for r in topic_rows(40, seed=1) + topic_rows(12, seed=3)})
    stored = store.get_json(f"datasets/{cfg.name}/versions/{ds.version_id}/version.json")
    assert stored["train_fingerprint"] == ds.train_fingerprint
    train_texts = {json.loads(x)["text"] for x in store.get_bytes(ds.train_key).decode().splitlines()}
    eval_texts = {json.loads(x)["text"] for x in store.get_bytes(ds.eval_key).decode().splitlines()}
    assert train_texts and eval_texts and not train_texts & eval_texts
    assert store.get_json(paths.validation_report(cfg.name, record.job_id))["ok"] is True

    # lineage on every candidate version and run
    for cand in record.candidates:
        tags = registry.version_tags(cfg.name, cand.version)
        assert tags["dataset_version"] == ds.version_id
        assert tags["dataset_fingerprint"] == ds.train_fingerprint
        assert tags["run_id"] == cand.run_id
        assert tags["sift.blessed"] in {"true", "false"} and tags["sift.bless_reason"]
        assert tags["sift.bless_champion_version"] == champion
        if cand.name == "warm":
            assert tags["parent_version"] == champion
        run = registry.run(cand.run_id)
        assert run.data.tags["sift.dataset_version"] == ds.version_id
        assert run.data.tags["sift.job_id"] == record.job_id
        assert "bless.macro_f1" in run.data.metrics
        artifacts = set(registry.list_artifacts(cand.run_id, "report"))
        assert {"report/confusion.png", "report/learning_curve.png", "report/verdict.json"} <= artifacts
        assert registry.list_artifacts(cand.run_id, "dataset") == ["dataset/version.json"]
        verdict = load_verdict(store, cfg.name, cand.version)
        assert verdict is not None and verdict.selected == (cand.version == record.selected_version)
    assert record.verdict.blessed and record.verdict.gain > 0
    assert load_job(store, cfg.name, record.job_id).status == "promoted"
    phases = [p.name for p in record.phases]
    assert phases[:3] == ["assemble", "validate", "load_champion"] and phases[-1] == "promote"

    # the operator's view: sift models list / report (metrics, verdict, lineage, PNGs downloaded)
    from typer.testing import CliRunner

    from retrain.cli import app

    runner = CliRunner()
    out = runner.invoke(app, ["models", "list", cfg.name])
    assert out.exit_code == 0, out.output
    listed = {m["version"]: m for m in json.loads(out.output)}
    assert listed[new.version]["aliases"] == ["champion"] and listed[champion]["aliases"] == ["previous-champion"]
    out = runner.invoke(app, ["models", "report", cfg.name, new.version, "--out", str(tmp_path / "reports")])
    assert out.exit_code == 0, out.output
    assert "blessed: True" in out.output and f"dataset version: {ds.version_id}" in out.output
    assert "/#/experiments/" in out.output
    selected = next(c for c in record.candidates if c.version == new.version)
    if selected.name == "warm":
        assert f"parent version:  {champion}" in out.output
    pngs = [line.strip() for line in out.output.splitlines() if line.strip().endswith(".png")]
    assert {Path(p).name for p in pngs} == {"confusion.png", "learning_curve.png"}
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


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers["content-length"]))
        _Hook.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _failures(classifier: str, stage: str) -> float:
    return REGISTRY.get_sample_value("sift_retrain_failures_total", {"classifier": classifier, "stage": stage}) or 0


def test_failing_data_check_stops_the_job_and_alerts(sift_settings, mlflow_server, tiny_model_dir, published):
    from infra.local.procs import free_port

    port = free_port()
    server = http.server.HTTPServer(("127.0.0.1", port), _Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    cfg, _, champion = seed_classifier(sift_settings, tiny_model_dir, min_examples_per_label=40,
                                       alert_webhook_url=f"http://127.0.0.1:{port}/alert")
    events = reviewed(cfg.name, topic_rows(3, seed=5))
    events[0] = events[0].model_copy(update={"label": "politics"})
    write_reviewed(sift_settings, events)
    registry, store = Registry(sift_settings), ObjectStore(sift_settings)
    versions_before = len(registry.versions(cfg.name))
    try:
        record = run_retrain_job(sift_settings, cfg.name, FAST_OPTIONS, publish=published.append)
    finally:
        server.shutdown()

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
    assert [a["stage"] for a in _Hook.received if a["classifier"] == cfg.name] == ["validate"]
    assert "the champion keeps serving" in record.reason
