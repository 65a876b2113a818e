"""The bus against the real Tansu broker (S3 storage on SeaweedFS): round trip, per-record commits,
dead letters, transient retries."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from infra.bus import Bus, PermanentError, TransientError
from infra.events import DeadLetter, Event, ReviewRequest
from infra.settings import Settings
from tests.bus_helpers import isolated, read_topic, wait_until

pytestmark = pytest.mark.timeout(180)


def _request(i: int, classifier: str = "news") -> ReviewRequest:
    return ReviewRequest(event_id=f"ev-{i}", classifier=classifier, text=f"text {i}", source="user_feedback")


def _consume_in_thread(bus: Bus, group: str, handler, stop: threading.Event) -> threading.Thread:  # noqa: ANN001
    def run() -> None:
        consumer = bus.consumer(group, ["review-requests"])
        producer = bus.producer()
        try:
            bus.run_consumer(consumer, handler, stop=stop, dead_letter_producer=producer, backoff_s=0.05)
        finally:
            consumer.close()
            producer.close()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


@pytest.fixture
def bus(sift_settings: Settings) -> Bus:
    b = Bus(isolated(sift_settings))
    b.ensure_topics()
    b.ensure_topics()  # idempotent: a second provisioning run is not an error
    return b


def test_round_trip(bus: Bus) -> None:
    producer = bus.producer()
    for i in range(5):
        bus.send_sync(producer, "review-requests", _request(i))
    producer.close()

    got: list[tuple[str, Event]] = []
    stop = threading.Event()
    t = _consume_in_thread(bus, "g-rt", lambda short, ev: got.append((short, ev)), stop)
    assert wait_until(lambda: len(got) >= 5, 30)
    stop.set()
    t.join(10)
    assert [short for short, _ in got] == ["review-requests"] * 5
    assert [ev.event_id for _, ev in got] == [f"ev-{i}" for i in range(5)]
    assert isinstance(got[0][1], ReviewRequest) and got[0][1].text == "text 0"


CRASHING_CONSUMER = textwrap.dedent(
    """
    import os, sys
    import threading
    from infra.bus import Bus
    from infra.settings import Settings
    bootstrap, prefix, group, out, crash_at = sys.argv[1:6]
    bus = Bus(Settings(kafka_bootstrap=bootstrap, topic_prefix=prefix))
    done = []
    def handler(short, ev):
        with open(out, "a") as f:          # the durable side effect
            f.write(ev.event_id + "\\n")
        done.append(ev.event_id)
        if len(done) == int(crash_at):
            os._exit(3)                    # crash after the side effect, before the commit
    consumer = bus.consumer(group, ["review-requests"])
    bus.run_consumer(consumer, handler, stop=threading.Event(), dead_letter_producer=bus.producer())
    """
)


def test_crash_mid_batch_redelivers_only_unprocessed(bus: Bus, tmp_path: Path) -> None:
    producer = bus.producer()
    for i in range(10):
        bus.send_sync(producer, "review-requests", _request(i))
    producer.close()
    out = tmp_path / "side-effects.txt"
    argv = [sys.executable, "-c", CRASHING_CONSUMER, bus.settings.kafka_bootstrap, bus.settings.topic_prefix,
            "g-crash", str(out)]
    # first process: fetches all 10 in one poll, handles 4, crashes inside the 5th
    first = subprocess.run([*argv, "5"], timeout=120, cwd=Path(__file__).parents[1])
    assert first.returncode == 3
    assert out.read_text().split() == [f"ev-{i}" for i in range(5)]

    # second process of the same group: resumes at the first uncommitted record (the 5th)
    out.write_text("")
    second = subprocess.Popen([*argv, "6"], cwd=Path(__file__).parents[1])
    try:
        assert second.wait(timeout=120) == 3
    finally:
        second.kill()
    assert out.read_text().split() == [f"ev-{i}" for i in range(4, 10)]


def test_poison_record_goes_to_dead_letter_and_consumer_carries_on(bus: Bus) -> None:
    producer = bus.producer()
    topic = bus.topic("review-requests")
    producer.send(topic, _request(0).to_bytes(), key=b"news").get(10)
    producer.send(topic, b"{not json", key=b"news").get(10)  # unparsable
    producer.send(topic, b'{"classifier": "news"}', key=b"news").get(10)  # schema violation
    producer.send(topic, _request(1).model_copy(update={"text": "poison"}).to_bytes(), key=b"news").get(10)
    producer.send(topic, _request(2).to_bytes(), key=b"news").get(10)
    producer.close()

    handled: list[str] = []

    def handler(short: str, ev: Event) -> None:
        assert isinstance(ev, ReviewRequest)
        if ev.text == "poison":
            raise PermanentError("text is poison")
        handled.append(ev.event_id)

    stop = threading.Event()
    t = _consume_in_thread(bus, "g-poison", handler, stop)
    assert wait_until(lambda: handled == ["ev-0", "ev-2"], 30), handled
    stop.set()
    t.join(10)

    dead = read_topic(bus.settings, "dead-letter", expect=3)
    assert len(dead) == 3
    assert all(isinstance(d, DeadLetter) and d.original_topic == topic for d in dead)
    assert dead[0].payload == "{not json" and dead[0].error.startswith("unparsable")
    assert dead[0].classifier == "news"
    assert "text" in dead[1].error  # the validation error names the missing field
    assert dead[2].error == "permanent: text is poison"

    # everything, poison included, is committed: a fresh member of the group gets nothing
    consumer = bus.consumer("g-poison", ["review-requests"])
    try:
        assert wait_until(lambda: bool(consumer.poll(timeout_ms=200) or consumer.assignment()), 20)
        # one classifier: all five records are on its partition
        assert sum(consumer.committed(tp) or 0 for tp in bus.partitions(consumer, "review-requests")) == 5
    finally:
        consumer.close()


def test_transient_error_retries_same_record_in_order(bus: Bus) -> None:
    producer = bus.producer()
    for i in range(3):
        bus.send_sync(producer, "review-requests", _request(i))
    producer.close()

    calls: list[str] = []
    failures = {"ev-1": 2}

    def handler(short: str, ev: Event) -> None:
        calls.append(ev.event_id)
        if failures.get(ev.event_id, 0) > 0:
            failures[ev.event_id] -= 1
            raise TransientError("store down")

    stop = threading.Event()
    t = _consume_in_thread(bus, "g-transient", handler, stop)
    assert wait_until(lambda: "ev-2" in calls, 30), calls
    stop.set()
    t.join(10)
    assert calls == ["ev-0", "ev-1", "ev-1", "ev-1", "ev-2"]


def test_unclassified_handler_bug_is_dead_lettered_after_max_attempts(bus: Bus) -> None:
    producer = bus.producer()
    bus.send_sync(producer, "review-requests", _request(0))
    bus.send_sync(producer, "review-requests", _request(1))
    producer.close()
    calls: list[str] = []

    def handler(short: str, ev: Event) -> None:
        calls.append(ev.event_id)
        if ev.event_id == "ev-0":
            raise KeyError("bug")

    stop = threading.Event()
    t = _consume_in_thread(bus, "g-bug", handler, stop)
    assert wait_until(lambda: "ev-1" in calls, 30), calls
    stop.set()
    t.join(10)
    assert calls == ["ev-0"] * 5 + ["ev-1"]
    dead = read_topic(bus.settings, "dead-letter", expect=1)
    assert len(dead) == 1 and "KeyError" in dead[0].error


def test_topics_get_the_configured_partitions_and_fewer_are_reported(sift_settings: Settings) -> None:
    """Created with SIFT_KAFKA_PARTITIONS; an existing topic with fewer is named (Tansu cannot add partitions)."""
    settings = isolated(sift_settings).model_copy(update={"kafka_partitions": 3})
    bus = Bus(settings)
    assert bus.ensure_topics(shorts=["review-requests"]) == {}
    assert bus.topic_partitions(["review-requests"]) == {"review-requests": 3}

    producer = bus.producer()
    sent = {name: producer.send(bus.topic("review-requests"), b"{}", key=name.encode()).get(10).partition
            for name in ("news", "spam", "sports", "legal", "tickets", "billing")}
    producer.close()
    assert len(set(sent.values())) > 1  # keys by classifier spread over partitions

    wider = Bus(settings.model_copy(update={"kafka_partitions": 5}))
    assert wider.ensure_topics(shorts=["review-requests"]) == {"review-requests": 3}


def test_rounds_end_at_poll_boundaries_and_starve_no_partition(bus: Bus) -> None:
    """The review worker's loop: short rounds (``until``) over a slow handler, while one partition has
    a backlog that keeps growing. Every record of the quiet partition is still handled, and no record
    twice (a round never leaves a polled record behind, so nothing is rewound and fetched again)."""
    from review.worker import partition_of

    partitions = bus.settings.kafka_partitions
    busy = "busy-tenant"
    quiet = next(f"quiet-{i}" for i in range(100)
                 if partition_of(f"quiet-{i}", partitions) != partition_of(busy, partitions))
    producer = bus.producer()
    for i in range(300):
        producer.send(bus.topic("review-requests"), _request(i, busy).to_bytes(), key=busy.encode())
    for i in range(5):
        producer.send(bus.topic("review-requests"), _request(1000 + i, quiet).to_bytes(), key=quiet.encode())
    producer.flush(15)
    stop = threading.Event()

    def keep_busy() -> None:  # the busy classifier's traffic never lets up
        i = 2000
        while not stop.wait(0.2):
            for _ in range(20):
                producer.send(bus.topic("review-requests"), _request(i, busy).to_bytes(), key=busy.encode())
                i += 1

    feeder = threading.Thread(target=keep_busy, daemon=True)
    feeder.start()
    handled: list[str] = []

    def handler(short: str, event: Event) -> None:
        assert isinstance(event, ReviewRequest)
        handled.append(event.event_id)
        if event.classifier == busy:
            stop.wait(0.02)  # a Label Studio round trip

    consumer = bus.consumer("g-rounds", ["review-requests"], max_poll_records=20)
    dead_letters = bus.producer()
    deadline = threading.Event()
    threading.Timer(90, deadline.set).start()
    try:
        while not deadline.is_set() and not all(f"ev-{1000 + i}" in handled for i in range(5)):
            round_stop = threading.Event()
            threading.Timer(0.3, round_stop.set).start()
            bus.run_consumer(consumer, handler, stop=stop, until=round_stop, dead_letter_producer=dead_letters)
    finally:
        stop.set()
        feeder.join(5)
        consumer.close()
        dead_letters.close()
        producer.close()
    assert all(f"ev-{1000 + i}" in handled for i in range(5)), f"quiet partition starved: {len(handled)} handled"
    assert len(handled) == len(set(handled)), "a record was handled twice"
