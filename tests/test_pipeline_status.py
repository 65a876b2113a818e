"""`sift status` reads the whole pipeline from the real broker, store, registry and spool."""

from __future__ import annotations

import json
import uuid

from typer.testing import CliRunner

from infra.bus import Bus, consumer_lag
from infra.events import TOPIC_REVIEW_REQUESTS, ReviewRequest
from infra.objectstore import ObjectStore
from infra.spool import Spool, SpooledRecord
from infra.tenants import ClassifierConfig, TenantStore
from sift.cli import app
from tests.bus_helpers import isolated


def test_status_shows_lag_spool_and_each_classifier(sift_settings, mlflow_server, monkeypatch) -> None:
    settings = isolated(sift_settings)
    monkeypatch.setenv("SIFT_TOPIC_PREFIX", settings.topic_prefix)
    name = f"st-{uuid.uuid4().hex[:6]}"
    TenantStore(ObjectStore(settings)).create(ClassifierConfig(name=name, labels=["a", "b"], threshold=0.55))
    bus = Bus(settings)
    bus.ensure_topics()
    producer = bus.producer()
    for i in range(3):  # no review worker runs: all three wait
        bus.send_sync(producer, TOPIC_REVIEW_REQUESTS,
                      ReviewRequest(classifier=name, text=f"text {i}", source="low_confidence"))
    producer.close()
    spool = Spool(settings.spool_dir)
    spool.append([SpooledRecord(topic="t", key=None, value=b"{}", event_id=f"e{i}") for i in range(2)])
    spool.close()
    lag = consumer_lag(settings, "review", [TOPIC_REVIEW_REQUESTS])
    topic = bus.topic(TOPIC_REVIEW_REQUESTS)
    assert set(lag) == {f"{topic}:{p}" for p in range(settings.kafka_partitions)}
    assert sorted(lag.values())[-1] == 3 == sum(lag.values())  # one classifier: all on its partition

    from infra.settings import get_settings
    get_settings.cache_clear()
    result = CliRunner().invoke(app, ["status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)  # warnings about other tests' classifiers go to stderr
    assert sum(status["lag"][Bus(settings).group("review")].values()) == 3
    assert status["topics"][TOPIC_REVIEW_REQUESTS] == settings.kafka_partitions and status["warnings"] == []
    assert status["spool_events"] == 2 and status["spool_oldest_age_s"] >= 0
    [row] = [c for c in status["classifiers"] if c["name"] == name]
    assert row["threshold"] == 0.55 and row["champion"] is None and row["last_retrain"] is None
    assert row["drift"] is None  # scored only against a champion's reference
    assert row["backlog"] == 0 and row["errors"] == []

    page = CliRunner().invoke(app, ["status"])
    assert page.exit_code == 0 and name in page.output and "SPOOL  2 events" in page.output

    # an empty spool is 0 events (not unknown)
    drained = Spool(settings.spool_dir)
    drained.remove([r.seq for r in drained.peek(10)])
    drained.close()
    result = CliRunner().invoke(app, ["status", "--json"])
    assert json.loads(result.stdout)["spool_events"] == 0


def test_the_page_keeps_a_verdicts_whole_reason() -> None:
    """The table shows the job's status; the reason, with the gate's interval, follows whole on its own line."""
    from sift.status import ClassifierStatus, PipelineStatus, render

    reason = ("v2 (warm) not promoted: macro-F1 gain +0.1230 (0.9060 vs champion 0.7830, 95% interval "
              "[-0.0349, +0.3058]): the candidate may be more than 0.0200 worse")
    page = render(PipelineStatus(processes={}, lag={}, spool_events=0, spool_oldest_age_s=None, classifiers=[
        ClassifierStatus(name="news", threshold=0.7, champion="1", last_retrain="not_promoted",
                         last_retrain_reason=reason)]))
    row = next(line for line in page.splitlines() if line.strip().startswith("news"))
    assert row.rstrip().endswith("not_promoted")
    assert f"      last retrain: {reason}" in page.splitlines()
