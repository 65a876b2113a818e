"""Low-confidence routing end to end: the real app (``sift.app``) serving a real tiny model through the
MLflow registry (S3 artifacts), publishing to the real broker (Tansu on S3).

- a classify below the classifier's threshold produces exactly one ``low_confidence`` review request
  carrying the prediction (label, confidence, scores, model version, prediction id);
- a confident one produces none — proven by reading the topic with a fresh consumer group from
  ``earliest`` up to the *fetched* high watermark (``end_offsets`` is wrong on Tansu);
- classify keeps answering 200 while the broker is down, and the review request is delivered once
  the broker is back (spool redelivery), exactly once after dedupe;
- the audit sample (``review_sample_rate``) routes about its share of the traffic whatever the
  confidence, each with a uniform ``audit_rank`` that does not follow the top-2 margin.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from infra.events import TOPIC_REVIEW_REQUESTS, ReviewRequest
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from sift.app import create_app
from tests.bus_helpers import isolated, read_topic, wait_until
from tests.model_fixtures import register_champion
from tests.services import KafkaService

pytestmark = pytest.mark.timeout(400)
AUDIT_RATE = 0.3


@dataclass
class Served:
    client: TestClient
    settings: Settings  # the test's own topic prefix
    keys: dict[str, str]  # classifier name -> API key
    versions: dict[str, str]  # classifier name -> champion version
    labels: list[str]

    def classify(self, name: str, text: str) -> dict[str, Any]:
        r = self.client.post(f"/v1/classifiers/{name}/classify", json={"text": text},
                             headers={"x-api-key": self.keys[name]})
        assert r.status_code == 200, r.text
        (res,) = r.json()["results"]
        return res


@pytest.fixture
def served(sift_settings: Settings, mlflow_server, tiny_model_dir: Path) -> Iterator[Served]:  # noqa: ANN001
    """Three classifiers on the same tiny model: 'doubtful' (threshold 0.999), 'sure' (0.01) and 'audit'
    (threshold 1e-6, below any top-label confidence, plus a 30% audit sample)."""
    settings = isolated(sift_settings)
    labels = json.loads((Path(tiny_model_dir) / "sift_model.json").read_text())["labels"]
    tenants = TenantStore(ObjectStore(settings))
    tenants.store.ensure_bucket()
    base = f"rt-{uuid.uuid4().hex[:6]}"
    keys: dict[str, str] = {}
    versions: dict[str, str] = {}
    for suffix, threshold, rate in (("doubtful", 0.999, 0.0), ("sure", 0.01, 0.0), ("audit", 1e-6, AUDIT_RATE)):
        cfg, key = tenants.create(ClassifierConfig(name=f"{base}-{suffix}", labels=labels, threshold=threshold,
                                                   review_sample_rate=rate))
        keys[suffix] = cfg.name
        keys[cfg.name] = key
        versions[cfg.name] = register_champion(settings, cfg.name, Path(tiny_model_dir))
    with TestClient(create_app(settings)) as client:
        yield Served(client, settings, keys, versions, labels)


def read_to_high_watermark(settings: Settings, short: str = TOPIC_REVIEW_REQUESTS,
                           timeout_s: float = 60.0) -> list[ReviewRequest]:
    """Every record of the topic (all partitions), read to the high watermarks its own fetches report."""
    return read_topic(settings, short, timeout_s=timeout_s)  # type: ignore[return-value]


AMBIGUOUS = "The weather delayed the match and markets reacted"


def test_low_confidence_classify_produces_exactly_one_review_request(served: Served,
                                                                      tiny_examples: dict[str, str]) -> None:
    doubtful, sure = served.keys["doubtful"], served.keys["sure"]
    confident = [served.classify(sure, text) for text in tiny_examples.values()]
    assert not any(res["review_requested"] for res in confident)
    res = served.classify(doubtful, AMBIGUOUS)
    assert res["review_requested"] is True and res["confidence"] < 0.999
    publisher = served.client.app.state.services.publisher  # type: ignore[attr-defined]
    assert publisher.flush(30), publisher.stats()

    events = read_to_high_watermark(served.settings)
    assert [e.classifier for e in events] == [doubtful]  # one for the doubtful one, none for the sure ones
    (ev,) = events
    assert ev.source == "low_confidence" and ev.text == AMBIGUOUS
    assert (ev.predicted_label, ev.confidence, ev.scores) == (res["label"], res["confidence"], res["scores"])
    assert (ev.model_version, ev.prediction_id) == (res["model_version"], res["prediction_id"])
    assert ev.model_version == served.versions[doubtful]
    assert set(ev.scores) == set(served.labels)
    assert ev.verdict is None and ev.suggested_label is None


def test_confident_classify_produces_none(served: Served, tiny_examples: dict[str, str]) -> None:
    sure = served.keys["sure"]
    for text in [*tiny_examples.values(), AMBIGUOUS]:
        assert served.classify(sure, text)["review_requested"] is False
    publisher = served.client.app.state.services.publisher  # type: ignore[attr-defined]
    assert publisher.flush(30), publisher.stats()
    assert publisher.stats().sent == 0
    assert read_to_high_watermark(served.settings) == []


def test_classify_answers_while_the_broker_is_down_and_the_event_arrives_after(
    served: Served, kafka_broker: KafkaService
) -> None:
    doubtful = served.keys["doubtful"]
    served.classify(doubtful, "warm-up before the outage")  # model loaded, producer connected
    publisher = served.client.app.state.services.publisher  # type: ignore[attr-defined]
    assert publisher.flush(30), publisher.stats()

    kafka_broker.kill()
    results = [served.classify(doubtful, f"{AMBIGUOUS} ({i})") for i in range(5)]
    assert all(r["review_requested"] for r in results)
    # answered while no broker could ack: the events wait in the publisher, then the spool
    assert wait_until(lambda: publisher.stats().spool_rows >= 5, 60), publisher.stats()

    kafka_broker.start()
    assert publisher.flush(90), publisher.stats()
    events = read_to_high_watermark(served.settings)
    ids = [e.prediction_id for e in events]
    wanted = {r["prediction_id"] for r in results}
    assert wanted <= set(ids)
    assert sum(1 for e in events if e.prediction_id in wanted) >= 5
    assert len({e.event_id for e in events if e.prediction_id in wanted}) == 5  # exactly once after dedupe
    print(f"\nclassify during the outage: raw events {len(events)}, "
          f"distinct {len({e.event_id for e in events})}; {publisher.stats()}")


def _ranks(values: list[float]) -> list[int]:
    order = sorted(range(len(values)), key=values.__getitem__)
    ranks = [0] * len(values)
    for r, i in enumerate(order):
        ranks[i] = r
    return ranks


def test_audit_sample_routes_its_share_with_priorities_not_ordered_by_margin(served: Served,
                                                                           tiny_examples: dict[str, str]) -> None:
    audit = served.keys["audit"]
    texts = [f"{base} ({i})" for i in range(100) for base in (*tiny_examples.values(), AMBIGUOUS)][:400]
    results = []
    for i in range(0, len(texts), 50):
        r = served.client.post(f"/v1/classifiers/{audit}/classify", json={"texts": texts[i:i + 50]},
                               headers={"x-api-key": served.keys[audit]})
        assert r.status_code == 200, r.text
        results += r.json()["results"]
    routed = [res for res in results if res["review_requested"]]
    # 400 draws at 30%: 120 expected, sd 9.2; 80..160 is over 4 sd either side
    assert 80 <= len(routed) <= 160, len(routed)
    publisher = served.client.app.state.services.publisher  # type: ignore[attr-defined]
    assert publisher.flush(30), publisher.stats()

    events = [e for e in read_to_high_watermark(served.settings) if e.classifier == audit]
    assert {e.prediction_id for e in events} == {res["prediction_id"] for res in routed}
    assert all(e.source == "audit_sample" and e.audit_rank is not None for e in events)
    # independent of confidence: sure texts are sampled too (confidence routing routes none at 1e-6)
    assert max(e.confidence or 0 for e in events) > min(e.confidence or 1 for e in events)
    # the review priority is the uniform audit rank, not the margin: rank correlation near 0
    # (Spearman's sd ~ 1/sqrt(n) ~ 0.09 here, so |rho| < 0.45 is about 5 sd)
    from review.queue import margin_of

    margins = [margin_of(e.model_copy(update={"source": "low_confidence"})) for e in events]
    assert len(set(margins)) > 10  # the margins do vary, so an ordering by them would show
    ranks = [margin_of(e) for e in events]
    assert ranks == [e.audit_rank for e in events]
    n = len(events)
    a, b = _ranks(margins), _ranks(ranks)
    rho = 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b, strict=True)) / (n * (n * n - 1))
    assert abs(rho) < 0.45, rho
    # and they spread over [0, 1): a quarter of them in each quarter, give or take
    quarters = [sum(q / 4 <= r < (q + 1) / 4 for r in ranks) for q in range(4)]
    assert min(quarters) >= n / 10, quarters
