"""`sift worker review`: the Kafka consumer group that turns review-requests into Label Studio tasks.

Each record goes through ``ReviewQueue.submit`` (durable in the object store before it returns),
then its offset alone is committed by ``infra.bus.run_consumer``. Between poll rounds (a round ends
at a poll boundary after ``tick_s``) the worker
refills the window of every classifier whose partition it owns, so tasks keep flowing to
reviewers when no new requests arrive, and only one replica ever writes a classifier's queue.
"""

from __future__ import annotations

import logging
import threading
import time

from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2
from kafka.structs import TopicPartition

from infra.bus import Bus, TransientError
from infra.events import TOPIC_REVIEW_REQUESTS, Event, ReviewRequest
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import TenantStore
from review.labelstudio import LabelStudioUnavailable, ReviewProjects
from review.queue import ReviewQueue

log = logging.getLogger(__name__)

GROUP_ID = "review"  # short: the group is Bus.group(GROUP_ID), "sift.review" by default
TICK_S = 5.0
POLL_RECORDS = 20


def partition_of(classifier: str, partitions: int) -> int:
    """The partition kafka-python's default partitioner picks for key = classifier."""
    return (murmur2(classifier.encode()) & 0x7FFFFFFF) % partitions


def _owned_classifiers(consumer: KafkaConsumer, topic: str, tenants: TenantStore) -> list:
    owned = {tp.partition for tp in consumer.assignment() if tp.topic == topic}
    if not owned:
        return []
    partitions = consumer.partitions_for_topic(topic) or {0}
    return [cfg for cfg in tenants.list() if partition_of(cfg.name, len(partitions)) in owned]


def make_handler(queue: ReviewQueue):  # noqa: ANN201 - infra.bus.Handler
    def handle(short_topic: str, event: Event) -> None:
        assert isinstance(event, ReviewRequest)
        try:
            outcome = queue.submit(event)
        except LabelStudioUnavailable as exc:  # only the object store is fatal; LS is handled inside
            raise TransientError(str(exc)) from exc
        log.info("review-request %s for %s: %s", event.event_id, event.classifier, outcome)

    return handle


def run_review_worker(settings: Settings, stop: threading.Event, *, tick_s: float = TICK_S) -> None:
    bus = Bus(settings, client_id="sift-review")
    while not stop.is_set():
        try:
            bus.ensure_topics()
            break
        except Exception as exc:  # the broker may still be starting
            log.warning("topics not ready (%s); retrying", exc)
            stop.wait(2)
    store = ObjectStore(settings)
    store.ensure_bucket()
    tenants = TenantStore(store)
    queue = ReviewQueue(settings, store, tenants, ReviewProjects.from_settings(settings))
    # small polls: a round ends at a poll boundary, so a tick waits at most for this many submits
    consumer = bus.consumer(GROUP_ID, [TOPIC_REVIEW_REQUESTS], max_poll_records=POLL_RECORDS)
    dead_letters = bus.producer()
    handler = make_handler(queue)
    topic = bus.topic(TOPIC_REVIEW_REQUESTS)
    # kept across the per-tick restarts of the consumer loop: a fresh dict each tick reset the count
    # of a failing record before it reached max_attempts, so a poison request was retried forever
    attempts: dict[tuple[TopicPartition, int], int] = {}
    log.info("review worker started (group %s)", bus.group(GROUP_ID))
    owned_partitions: list[int] | None = None
    try:
        while not stop.is_set():
            round_stop = threading.Event()
            timer = threading.Thread(target=lambda ev=round_stop: (stop.wait(tick_s), ev.set()), daemon=True)
            timer.start()
            # the round ends at a poll boundary (nothing polled is left unhandled), so the next one
            # continues where this one stopped: no rewind, no fetched records thrown away
            bus.run_consumer(consumer, handler, stop=stop, until=round_stop, dead_letter_producer=dead_letters,
                             attempts=attempts)
            if stop.is_set():
                break
            now_owned = sorted(tp.partition for tp in consumer.assignment() if tp.topic == topic)
            if now_owned != owned_partitions:  # the group moved partitions: evidence of who does what
                log.info("review worker owns partitions %s of %s", now_owned, topic)
                owned_partitions = now_owned
            started = time.monotonic()
            try:
                owned = _owned_classifiers(consumer, topic, tenants)
            except Exception:
                log.warning("could not list classifiers", exc_info=True)
                owned = []
            for cfg in owned:
                try:
                    queue.tick(cfg)
                except LabelStudioUnavailable as exc:
                    log.warning("refill of %s postponed: %s", cfg.name, exc)
                    break
                except Exception:
                    log.exception("refill of %s failed", cfg.name)
            log.debug("refilled %d classifiers in %.2fs", len(owned), time.monotonic() - started)
    finally:
        consumer.close()
        dead_letters.close(timeout=5)
        log.info("review worker stopped")

