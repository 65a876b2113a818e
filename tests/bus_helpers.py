"""Helpers shared by the bus / publisher / feedback tests: isolated topics and reading them back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from kafka import KafkaConsumer, TopicPartition

from infra.bus import Bus
from infra.events import Event, parse_event
from infra.settings import Settings


def isolated(settings: Settings) -> Settings:
    """Same services, a topic prefix of its own: tests share one broker but never each other's records."""
    return settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}."})


def read_topic(settings: Settings, short: str, *, expect: int | None = None,
               timeout_s: float = 30.0) -> list[Event]:
    """Every event on a (single-partition) topic from the beginning, without a consumer group.

    Reads until the consumer's position reaches the high watermark its own fetches report
    (``end_offsets`` is wrong on Tansu) and, with ``expect``, at least that many events arrived:
    whatever was on the topic when the caller asked (a duplicate included) is in the answer,
    with no idle wait. Returns what it has after ``timeout_s``; callers assert on it.
    """
    bus = Bus(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None, auto_offset_reset="earliest")
    tp = TopicPartition(bus.topic(short), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                events.extend(parse_event(short, r.value) for r in records)
            high = consumer.highwater(tp)
            if (high is not None and consumer.position(tp) >= high
                    and (expect is None or len(events) >= expect)):
                break
    finally:
        consumer.close()
    return events


def committed_offset(settings: Settings, group: str, short: str) -> int:
    """The offset a consumer group has committed on a (single-partition) topic: every record before
    it was handled (the bus commits each record after its side effect)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        return consumer.committed(TopicPartition(Bus(settings).topic(short), 0)) or 0
    finally:
        consumer.close()


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()
