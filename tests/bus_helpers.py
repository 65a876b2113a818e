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


def read_topic(settings: Settings, short: str, *, expect: int | None = None, timeout_s: float = 30.0,
               idle_s: float = 2.0) -> list[Event]:
    """Every event on a (single-partition) topic from the beginning, without a consumer group.

    Stops at `expect` events, or when nothing new arrived for `idle_s` after the fetched high
    watermark was reached (end_offsets is wrong on Tansu).
    """
    bus = Bus(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None, auto_offset_reset="earliest")
    tp = TopicPartition(bus.topic(short), 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    events: list[Event] = []
    deadline = time.monotonic() + timeout_s
    last_new = time.monotonic()
    try:
        while time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=300).values():
                for r in records:
                    events.append(parse_event(short, r.value))
                    last_new = time.monotonic()
            if expect is not None and len(events) >= expect:
                # linger briefly: a duplicate would show up now
                if time.monotonic() - last_new > 0.5:
                    break
            elif expect is None and time.monotonic() - last_new > idle_s:
                break
    finally:
        consumer.close()
    return events


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()
