"""EventPublisher + spool against the real broker: nothing blocks, nothing is lost, and after dedupe
by event_id every accepted event arrives exactly once — across a broker crash and a process crash."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from infra.events import ReviewRequest
from infra.local.procs import LOOPBACK, free_port
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.spool import Spool, SpooledRecord
from tests.alert_hook import AlertHook
from tests.bus_helpers import isolated, read_topic, wait_until
from tests.services import KafkaService

pytestmark = pytest.mark.timeout(300)


def _ev(i: int) -> ReviewRequest:
    return ReviewRequest(classifier="news", text=f"t{i}", source="low_confidence", prediction_id=f"p{i}")


def test_publish_round_trip(sift_settings: Settings) -> None:
    settings = isolated(sift_settings)
    pub = EventPublisher(settings)
    events = [_ev(i) for i in range(200)]
    for ev in events:
        pub.publish("review-requests", ev)
    assert pub.flush(30)
    stats = pub.stats()
    pub.close()
    assert stats.sent == 200 and stats.spooled == 0 and stats.pending == 0
    got = read_topic(settings, "review-requests", expect=200)
    assert [e.event_id for e in got] == [e.event_id for e in events]


def test_broker_down_at_start_spools_without_blocking_then_delivers(sift_settings: Settings) -> None:
    settings = isolated(sift_settings)
    operator = AlertHook()
    down = settings.model_copy(update={"kafka_bootstrap": f"{LOOPBACK}:{free_port()}",
                                       "alert_webhook_url": operator.url, "spool_alert_age_seconds": 1.0})
    pub = EventPublisher(down)
    events = [_ev(i) for i in range(100)]
    for ev in events:  # every call returns although no broker will ever answer
        pub.publish("review-requests", ev)
    assert pub.stats().sent == 0
    assert wait_until(lambda: pub.stats().spool_rows == 100, 20), pub.stats()
    assert not pub.flush(0.5)  # not delivered: flush says so instead of pretending
    # the spool is not draining: the operator hears of it once it is older than the limit
    try:
        [alert] = operator.wait_for("spool_age")
    finally:
        operator.close()
    assert alert["details"]["events"] == 100 and alert["details"]["oldest_age_s"] >= 1
    assert alert["details"]["broker"] == down.kafka_bootstrap and "unreachable" in alert["text"]
    pub.close()

    # same spool dir, broker reachable: the spooled events go out
    pub = EventPublisher(settings)
    assert pub.flush(60), pub.stats()
    assert pub.stats().redelivered == 100
    pub.close()
    got = read_topic(settings, "review-requests", expect=100)
    assert sorted(e.event_id for e in got) == sorted(e.event_id for e in events)


CRASHING_PUBLISHER = textwrap.dedent(
    """
    import os, sys, time
    from infra.events import ReviewRequest
    from infra.publisher import EventPublisher
    from infra.settings import Settings
    data_dir, bootstrap, prefix, n = sys.argv[1:5]
    pub = EventPublisher(Settings(data_dir=data_dir, kafka_bootstrap=bootstrap, topic_prefix=prefix))
    for i in range(int(n)):
        pub.publish("review-requests", ReviewRequest(event_id=f"crash-{i}", classifier="news",
                                                     text=str(i), source="user_feedback"))
    while pub.stats().spool_rows < int(n):
        time.sleep(0.05)
    print("spooled", flush=True)
    os._exit(9)  # a crash: no close(), no flush
    """
)


def test_spool_survives_process_crash(sift_settings: Settings) -> None:
    settings = isolated(sift_settings)
    dead_bootstrap = f"{LOOPBACK}:{free_port()}"
    proc = subprocess.run(
        [sys.executable, "-c", CRASHING_PUBLISHER, str(settings.data_dir), dead_bootstrap, settings.topic_prefix,
         "50"], capture_output=True, text=True, timeout=120, cwd=Path(__file__).parents[1],
    )
    assert proc.returncode == 9 and "spooled" in proc.stdout, proc.stderr[-2000:]

    pub = EventPublisher(settings)  # the "restarted" process
    assert pub.flush(60), pub.stats()
    pub.close()
    got = read_topic(settings, "review-requests", expect=50)
    assert sorted(e.event_id for e in got) == sorted(f"crash-{i}" for i in range(50))


def test_broker_killed_while_publishing_every_event_arrives_once_after_dedupe(
    sift_settings: Settings, kafka_broker: KafkaService
) -> None:
    settings = isolated(sift_settings)
    # short delivery timeout so the outage outlasts it: in-flight events fail and take the spool path
    pub = EventPublisher(settings, producer_overrides={"delivery_timeout_ms": 2500, "request_timeout_ms": 1000})
    accepted: list[str] = []
    stop = threading.Event()

    def load() -> None:
        i = 0
        while not stop.is_set():
            ev = _ev(i)
            pub.publish("review-requests", ev)
            accepted.append(ev.event_id)
            i += 1
            time.sleep(0.005)  # pacing only

    t = threading.Thread(target=load, daemon=True)
    t.start()
    try:
        assert wait_until(lambda: pub.stats().sent > 100, 30)
        kafka_broker.kill()
        at_kill = len(accepted)
        # publishing goes on against the dead broker: in-flight events time out into the spool,
        # and 200 more are accepted while it is down
        assert wait_until(lambda: pub.stats().spooled > 0 and len(accepted) >= at_kill + 200, 60), pub.stats()
        accepted_while_down = len(accepted) - at_kill
        kafka_broker.start()
        sent_at_restart = pub.stats().sent
        assert wait_until(lambda: pub.stats().sent > sent_at_restart + 100, 60), pub.stats()  # live again
    finally:
        stop.set()
        t.join(10)
    assert pub.flush(120), pub.stats()
    stats = pub.stats()
    pub.close()

    got = read_topic(settings, "review-requests", expect=len(accepted), timeout_s=60)
    ids = [e.event_id for e in got]
    assert set(ids) == set(accepted), f"missing {len(set(accepted) - set(ids))}"
    assert len(set(ids)) == len(accepted)  # exactly once after dedupe; raw duplicates are allowed
    assert stats.spooled > 0 and stats.redelivered == stats.spooled
    print(f"accepted={len(accepted)} (while down {accepted_while_down}) raw={len(ids)} "
          f"duplicates={len(ids) - len(set(ids))} {stats}")


def _big(i: int) -> ReviewRequest:
    return ReviewRequest(event_id=f"big-{i}", classifier="news", text="x" * 2_000_000, source="batch_feedback")


@pytest.mark.parametrize("limit", ["sift", "producer"])
def test_oversized_event_is_dead_lettered_and_never_blocks_the_others(sift_settings: Settings, limit: str) -> None:
    """'sift': our own size check (works with the broker down too); 'producer': the check lifted, so
    kafka-python's max_request_size refuses the record (Tansu itself took 20 MB records in a probe)."""
    settings = isolated(sift_settings)
    if limit == "producer":
        settings = settings.model_copy(update={"kafka_max_record_bytes": 64 * 1024 * 1024})
    pub = EventPublisher(settings)
    try:
        assert wait_until(lambda: pub.stats().broker_up, 30)
        outcome = pub.publish_durable("review-requests", [_ev(0), _big(0), _ev(1)], timeout=15)
        assert (outcome.spooled, outcome.dead_lettered) == (0, 1), outcome
        pub.publish("review-requests", _big(1))  # fire-and-forget path: same rule
        pub.publish("review-requests", _ev(2))
        assert pub.flush(30), pub.stats()
        assert pub.stats().dead_lettered == 2 and pub.stats().spool_rows == 0
    finally:
        pub.close()
    got = read_topic(settings, "review-requests", expect=3)
    assert sorted(e.text for e in got) == ["t0", "t1", "t2"]
    dead = read_topic(settings, "dead-letter", expect=2)
    assert sorted(d.event_id for d in dead) == ["big-0", "big-1"]
    for d in dead:
        assert d.original_topic == settings.topic_prefix + "review-requests" and d.classifier == "news"
        assert d.error.startswith("too-large: ")
        assert ("SIFT_KAFKA_MAX_RECORD_BYTES" if limit == "sift" else "MessageSizeTooLargeError") in d.error
        assert len(d.payload) == 64 * 1024 and "payload cut" in d.error


@pytest.mark.parametrize("limit", ["sift", "producer"])
def test_spool_drains_around_an_oversized_row(sift_settings: Settings, limit: str) -> None:
    """A spool that already holds a too-large row ahead of good ones (written while the broker was
    down, or by a version before this rule) delivers the good ones and dead-letters the big one."""
    settings = isolated(sift_settings)
    if limit == "producer":
        settings = settings.model_copy(update={"kafka_max_record_bytes": 64 * 1024 * 1024})
    topic = settings.topic_prefix + "review-requests"
    spool = Spool(settings.spool_dir)
    spool.append([SpooledRecord(topic, b"news", ev.to_bytes(), ev.event_id) for ev in (_ev(0), _big(0), _ev(1))])
    spool.close()
    pub = EventPublisher(settings)
    try:
        assert pub.flush(60), pub.stats()
        assert pub.stats().dead_lettered == 1
    finally:
        pub.close()
    assert [e.text for e in read_topic(settings, "review-requests", expect=2)] == ["t0", "t1"]
    [dead] = read_topic(settings, "dead-letter", expect=1)
    assert dead.event_id == "big-0"


def test_unserialisable_event_is_dead_lettered_not_raised(sift_settings: Settings) -> None:
    settings = isolated(sift_settings)
    pub = EventPublisher(settings)
    try:
        bad = ReviewRequest(event_id="surrogate", classifier="news", text="bad \ud800", source="user_feedback")
        outcome = pub.publish_durable("review-requests", [bad, _ev(0)], timeout=15)
        assert outcome.dead_lettered == 1
        assert pub.flush(30), pub.stats()
    finally:
        pub.close()
    assert [e.text for e in read_topic(settings, "review-requests", expect=1)] == ["t0"]
    [dead] = read_topic(settings, "dead-letter", expect=1)
    assert dead.event_id == "surrogate" and dead.error.startswith("unserialisable")
    assert "\\ud800" in dead.payload
