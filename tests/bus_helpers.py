"""Helpers shared by the bus / publisher / feedback tests: isolated topics and reading them back."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord

from infra.bus import Bus
from infra.events import Event, parse_event
from infra.settings import Settings


def isolated(settings: Settings) -> Settings:
    """Same services, a topic prefix of its own: tests share one broker but never each other's records."""
    return settings.model_copy(update={"topic_prefix": f"t{uuid.uuid4().hex[:8]}."})


def read_records(settings: Settings, short: str, *, expect: int | None = None,
                 timeout_s: float = 30.0) -> list[ConsumerRecord]:
    """Every record on every partition of a topic from the beginning, without a consumer group.

    Reads until the consumer's position on each partition reaches the high watermark its own
    fetches report (``end_offsets`` is wrong on Tansu) and, with ``expect``, at least that many
    records arrived: whatever was on the topic when the caller asked (a duplicate included) is in
    the answer, with no idle wait. Order holds within a partition (one classifier), not across.
    Returns what it has after ``timeout_s``; callers assert on it.
    """
    bus = Bus(settings)
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False,
                             group_id=None, auto_offset_reset="earliest")
    records: list[ConsumerRecord] = []
    deadline = time.monotonic() + timeout_s
    try:
        tps = bus.partitions(consumer, short)
        while not tps and time.monotonic() < deadline:
            time.sleep(0.2)
            tps = bus.partitions(consumer, short)
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=300).values():
                records.extend(batch)
            highs = [consumer.highwater(tp) for tp in tps]
            if (all(h is not None and consumer.position(tp) >= h for tp, h in zip(tps, highs, strict=True))
                    and (expect is None or len(records) >= expect)):
                break
    finally:
        consumer.close()
    return records


def read_topic(settings: Settings, short: str, *, expect: int | None = None,
               timeout_s: float = 30.0) -> list[Event]:
    """The events of ``read_records``, parsed."""
    return [parse_event(short, r.value) for r in read_records(settings, short, expect=expect, timeout_s=timeout_s)]


def committed_offset(settings: Settings, group: str, short: str) -> int:
    """The sum over a topic's partitions of a consumer group's committed offsets: every record before
    them was handled (the bus commits each record after its side effect)."""
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=Bus(settings).group(group),
                             enable_auto_commit=False)
    try:
        return sum(consumer.committed(tp) or 0 for tp in Bus(settings).partitions(consumer, short))
    finally:
        consumer.close()


def wait_until(check: Callable[[], bool], timeout_s: float, interval_s: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(interval_s)
    return check()
