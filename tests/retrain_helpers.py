"""Helpers for the retrain tests: a classifier with a seed and a champion, reviewed labels in S3."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from infra.events import ReviewedLabel
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig, RetrainPolicy, TenantStore
from retrain.dataio import LabeledText
from retrain.job import CandidateSpec, JobOptions
from retrain.seed import store_seed
from tests.model_fixtures import TINY_LABELS, register_champion, tiny_spec, topic_rows

TEST_POLICY = dict(min_new_labels=30, promotion_margin=0.0, recall_tolerance=0.05, min_examples_per_label=5,
                   eval_share=0.25, epochs=2, learning_rate=3e-4, batch_size=16, max_length=32, time_budget_s=120)
FAST_OPTIONS = JobOptions(candidates=[CandidateSpec(name="warm", init="champion"),
                                      CandidateSpec(name="fresh", init="base", num_hidden_layers=1, epochs=3)])


def make_classifier(settings: Settings, **policy: object) -> tuple[ClassifierConfig, str]:
    store = ObjectStore(settings)
    store.ensure_bucket()
    cfg = ClassifierConfig(name=f"rt-{uuid.uuid4().hex[:8]}", labels=list(TINY_LABELS), threshold=0.5,
                           retrain=RetrainPolicy(**{**TEST_POLICY, **policy}))
    cfg, key = TenantStore(store).create(cfg)
    return cfg, key


def weak_model_dir(tmp: Path) -> Path:
    """A model trained on rotated labels (finance->sports->weather->finance): confidently wrong, so any
    candidate trained on the true labels beats it by far and the promotion is certain."""
    from model.train import fine_tune

    rotate = {a: b for a, b in zip(TINY_LABELS, TINY_LABELS[1:] + TINY_LABELS[:1], strict=True)}
    rows = [LabeledText(text=r.text, label=rotate[r.label]) for r in topic_rows(30, seed=1)]
    return Path(fine_tune(rows, tiny_spec(epochs=2), out_dir=tmp / "weak", progress=False).model_dir)


def seed_classifier(settings: Settings, model_dir: Path, **policy: object) -> tuple[ClassifierConfig, str, str]:
    """A classifier with the tiny corpus as seed (in S3) and ``model_dir`` as champion."""
    cfg, key = make_classifier(settings, **policy)
    store_seed(ObjectStore(settings), cfg.name, topic_rows(40, seed=1), source="tests")
    version = register_champion(settings, cfg.name, model_dir)
    return cfg, key, version


def reviewed(classifier: str, rows: list[LabeledText], *, start: datetime | None = None) -> list[ReviewedLabel]:
    t0 = start or datetime.now(UTC)
    return [ReviewedLabel(classifier=classifier, text=r.text, label=r.label, reviewer="tester",
                          source="low_confidence", reviewed_at=t0 + timedelta(milliseconds=i))
            for i, r in enumerate(rows)]


def write_reviewed(settings: Settings, events: list[ReviewedLabel]) -> None:
    """Append reviewed labels the way the review stage does: one immutable JSONL file per append."""
    store = ObjectStore(settings)
    by_classifier: dict[str, list[ReviewedLabel]] = {}
    for e in events:
        by_classifier.setdefault(e.classifier, []).append(e)
    for c, evs in by_classifier.items():
        body = "".join(e.model_dump_json() + "\n" for e in evs).encode()
        key = f"datasets/{c}/reviewed/{evs[0].reviewed_at:%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex}.jsonl"
        store.put_bytes(key, body, "application/x-ndjson")


def labels_of_meta(model_dir: Path) -> list[str]:
    return json.loads((Path(model_dir) / "sift_model.json").read_text())["labels"]
