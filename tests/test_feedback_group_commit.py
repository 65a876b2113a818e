"""Group commit of single feedback (issue 15) on the real app and the real broker: concurrent requests
share produce batches and flushes, yet each 202 still means its own event is acked by the broker or
in the spool — every accepted event reaches the topic exactly once (after dedupe across a broker
crash), and nothing accepted is lost when the broker dies under a group in flight."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from classifier.engine import ServingEngine
from infra.events import ReviewRequest
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from sift.app import create_app
from tests.bus_helpers import isolated, read_topic, wait_until
from tests.services import KafkaService

pytestmark = pytest.mark.timeout(300)
LABELS = ["sports", "tech", "politics"]


@dataclass
class App:
    app: FastAPI
    publisher: EventPublisher
    settings: Settings
    url: str
    key: str


def _app(settings: Settings, publisher: EventPublisher) -> Iterator[App]:
    app = create_app(settings, engine=ServingEngine(lambda name: None), publisher=publisher)
    with TestClient(app) as client:  # runs the lifespan; requests below go through ASGI, concurrently
        name = f"gc-{uuid.uuid4().hex[:8]}"
        _, key = client.app.state.services.tenants.create(  # type: ignore[attr-defined]
            ClassifierConfig(name=name, labels=LABELS, rate_limit_per_s=100_000, rate_limit_burst=100_000))
        yield App(app, publisher, settings, f"/v1/classifiers/{name}/feedback", key)
    publisher.close()


@pytest.fixture
def fb(sift_settings: Settings) -> Iterator[App]:
    settings = isolated(sift_settings)
    yield from _app(settings, EventPublisher(settings))


@pytest.fixture
def fb_short_timeouts(sift_settings: Settings) -> Iterator[App]:
    settings = isolated(sift_settings)
    # a delivery timeout shorter than the outage: a group in flight when the broker dies fails into the spool
    yield from _app(settings, EventPublisher(settings, producer_overrides={"delivery_timeout_ms": 2500,
                                                                            "request_timeout_ms": 1000}))


@dataclass
class Load:
    """Closed-loop clients posting feedback until told to stop; what each response said."""

    fb: App
    accepted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    stop: bool = False
    sent: int = 0

    async def run(self, clients: int, limit: int | None = None) -> None:
        transport = httpx.ASGITransport(app=self.fb.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://sift", timeout=60,
                                     headers={"x-api-key": self.fb.key}) as client:
            async def worker(w: int) -> None:
                i = 0
                while not self.stop and (limit is None or self.sent < limit):
                    i += 1
                    self.sent += 1
                    r = await client.post(self.fb.url, json={"text": f"client {w} says {i}", "label": "tech",
                                                             "verdict": "like"})
                    if r.status_code == 202:
                        self.accepted.append(r.json()["event_id"])
                    else:
                        self.refused.append(f"{r.status_code} {r.text}")

            await asyncio.gather(*(worker(w) for w in range(clients)))


def test_concurrent_feedback_each_202_and_every_event_on_the_topic_once(fb: App) -> None:
    load = Load(fb)
    asyncio.run(load.run(clients=64, limit=600))
    assert load.refused == [] and len(load.accepted) == 600
    stats = fb.publisher.stats()
    assert stats.spooled == 0 and stats.sent == 600, stats  # acked before each 202, not spooled
    got = read_topic(fb.settings, "review-requests", expect=600)
    ids = [e.event_id for e in got]
    assert sorted(ids) == sorted(load.accepted)  # each exactly once, nothing extra
    assert all(e.source == "user_feedback" and e.predicted_label == "tech" for e in got)
    print(f"600 events in {stats.groups} group commits")


def test_broker_killed_under_group_commits_loses_no_accepted_feedback(fb_short_timeouts: App,
                                                                      kafka_broker: KafkaService) -> None:
    fb = fb_short_timeouts
    load = Load(fb)
    pub = fb.publisher

    # the load runs in a thread of its own; the broker is killed and restarted from this one (a
    # broker started from a short-lived thread would die with it: PR_SET_PDEATHSIG)
    runner = threading.Thread(target=asyncio.run, args=(load.run(clients=16),), daemon=True)
    runner.start()
    try:
        assert wait_until(lambda: len(load.accepted) >= 200, 60), load.refused[:3]
        kafka_broker.kill()  # 16 clients: a group is on its way to the broker
        at_kill = len(load.accepted)
        # groups in flight time out into the spool; later ones go there directly, still 202
        assert wait_until(lambda: pub.stats().spooled > 0 and len(load.accepted) >= at_kill + 200, 90), \
            (pub.stats(), load.refused[:3])
        kafka_broker.start()
        sent = pub.stats().sent
        assert wait_until(lambda: pub.stats().sent >= sent + 200, 90), pub.stats()  # acked again
    finally:
        load.stop = True
        runner.join(60)
    assert load.refused == []  # the spool was there the whole time: no 503
    assert pub.flush(120), (pub.stats(), kafka_broker.is_running)
    stats = pub.stats()
    got = read_topic(fb.settings, "review-requests", expect=len(load.accepted), timeout_s=60)
    ids = [e.event_id for e in got]
    assert set(ids) == set(load.accepted), f"missing {len(set(load.accepted) - set(ids))}"
    assert len(set(load.accepted)) == len(load.accepted)
    assert stats.spooled > 0 and stats.redelivered == stats.spooled
    print(f"accepted={len(load.accepted)} raw={len(ids)} duplicates={len(ids) - len(set(ids))} {stats}")


@pytest.mark.parametrize("limit", ["sift", "producer"])
def test_oversized_event_in_a_group_is_dead_lettered_and_the_others_acked(sift_settings: Settings,
                                                                          limit: str) -> None:
    """'sift': our own size check before the group is sent; 'producer': that check lifted, so
    kafka-python refuses the record inside the group and its DeadLetter is sent instead."""
    settings = isolated(sift_settings)
    if limit == "producer":
        settings = settings.model_copy(update={"kafka_max_record_bytes": 64 * 1024 * 1024})
    pub = EventPublisher(settings)
    events = [ReviewRequest(event_id=f"small-{i}", classifier="news", text=f"t{i}", source="user_feedback")
              for i in range(20)]
    big = ReviewRequest(event_id="big", classifier="news", text="x" * 2_000_000, source="user_feedback")
    try:
        assert wait_until(lambda: pub.stats().broker_up, 30)
        futures = [pub.submit_durable("review-requests", ev, timeout=15) for ev in [*events[:10], big, *events[10:]]]
        outcomes = [f.result(30) for f in futures]
    finally:
        pub.close()
    assert [(o.acked, o.spooled, o.dead_lettered) for o in outcomes] == [(1, 0, 0)] * 10 + [(1, 0, 1)] + \
        [(1, 0, 0)] * 10  # the DeadLetter of the big one was acked
    assert sorted(e.event_id for e in read_topic(settings, "review-requests", expect=20)) == \
        sorted(e.event_id for e in events)
    [dead] = read_topic(settings, "dead-letter", expect=1)
    assert dead.event_id == "big" and dead.error.startswith("too-large: ")
