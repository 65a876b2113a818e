"""The Kafka bus: topic names, provisioning, producer/consumer factories and the consume loop.

Every stage talks to the others only through these helpers, so the broker rules from
ARCHITECTURE.md live in one place: explicit per-record commits after the side effect,
a dead-letter topic for what can never be processed, ``earliest`` + committed offsets (Tansu
reports end offsets wrongly), and group timings that are quick on Tansu and valid on Kafka.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata, TopicPartition

from infra.events import ALL_TOPICS, TOPIC_DEAD_LETTER, DeadLetter, Event, parse_event
from infra.metrics import count_dead_letter, export_lag
from infra.settings import Settings

log = logging.getLogger(__name__)

TOPIC_ALREADY_EXISTS = 36

Handler = Callable[[str, Event], None]
"""Called with (short topic, parsed event); must make its side effect durable before returning."""


class PermanentError(Exception):
    """The record can never be processed (bad content, unknown classifier): dead-letter it."""


class TransientError(Exception):
    """Processing failed for a reason that may go away (a store is down): retry the same record."""


# connection-level failures are retried like TransientError; anything else is a bug or bad data
_TRANSIENT = (TransientError, KafkaError, ConnectionError, TimeoutError)


class Bus:
    """Factories bound to one settings object; full topic name = ``topic_prefix + short``."""

    def __init__(self, settings: Settings, client_id: str = "sift") -> None:
        self.settings = settings
        self.client_id = client_id

    def topic(self, short: str) -> str:
        return self.settings.topic_prefix + short

    def group(self, short: str) -> str:
        """Consumer groups are namespaced like topics: two deployments (or tests) on one cluster
        never share a group, so one's members never trigger the other's rebalances."""
        return self.settings.topic_prefix + short

    def short(self, topic: str) -> str:
        prefix = self.settings.topic_prefix
        return topic[len(prefix):] if prefix and topic.startswith(prefix) else topic

    def ensure_topics(self, partitions: int | None = None, shorts: Iterable[str] = ALL_TOPICS,
                      timeout_s: float = 10.0) -> dict[str, int]:
        """Create the topics, tolerating ones that exist (several processes provision at start).

        Partitions and replication come from settings unless ``partitions`` is given. Uses only
        CreateTopics and Metadata: ``create_partitions`` fails on Tansu, so an existing topic with fewer
        partitions than wanted is not expanded; it is logged and returned (short name → partitions it has).
        """
        partitions = partitions or self.settings.kafka_partitions
        replication = self.settings.kafka_replication
        spec: dict[str, Any] = {"num_partitions": partitions, "replication_factor": replication}
        if replication > 1:
            min_isr = self.settings.kafka_min_insync_replicas or max(1, replication - 1)
            spec["configs"] = {"min.insync.replicas": str(min(min_isr, replication))}
        shorts = list(shorts)
        admin = KafkaAdminClient(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.client_id}-admin",
            request_timeout_ms=int(timeout_s * 1000),
            bootstrap_timeout_ms=int(timeout_s * 1000),
        )
        try:
            wanted = {self.topic(s): dict(spec) for s in shorts}
            result = admin.create_topics(wanted, raise_errors=False)
            for t in result.get("topics", []):
                if t["error_code"] not in (0, TOPIC_ALREADY_EXISTS):
                    raise RuntimeError(f"cannot create topic {t['name']}: {t.get('error_message')}")
            have = _partition_counts(admin, [self.topic(s) for s in shorts])
        finally:
            admin.close()
        short_of = {self.short(t): n for t, n in have.items() if n < partitions}
        for short, n in short_of.items():
            log.warning("topic %s has %d partition(s), SIFT_KAFKA_PARTITIONS=%d: at most %d worker(s) of its "
                        "consumer group get work; recreate the topic (or add partitions with the broker's "
                        "tools) to scale further", self.topic(short), n, partitions, n)
        return short_of

    def topic_partitions(self, shorts: Iterable[str] = ALL_TOPICS, timeout_s: float = 10.0) -> dict[str, int]:
        """Partitions each existing topic has (short name → count), read from the broker's metadata."""
        admin = KafkaAdminClient(bootstrap_servers=self.settings.kafka_bootstrap, client_id=f"{self.client_id}-admin",
                                 request_timeout_ms=int(timeout_s * 1000), bootstrap_timeout_ms=int(timeout_s * 1000))
        try:
            return {self.short(t): n for t, n in _partition_counts(admin, [self.topic(s) for s in shorts]).items()}
        finally:
            admin.close()

    def partitions(self, consumer: KafkaConsumer, short: str) -> list[TopicPartition]:
        """Every partition of a topic, for readers that assign instead of joining a group."""
        topic = self.topic(short)
        return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]

    def producer(self, **overrides: Any) -> KafkaProducer:
        """acks=all with bounded retries; failures surface within ``delivery_timeout_ms``.

        Idempotence is off: duplicates from retries are removed by consumers (stable event_id),
        and producer-id sequence state does not survive a restart of the local broker.
        """
        config: dict[str, Any] = dict(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.client_id}-producer",
            acks="all",
            retries=5,
            enable_idempotence=False,
            linger_ms=5,
            request_timeout_ms=5_000,
            delivery_timeout_ms=15_000,
            max_block_ms=5_000,
            bootstrap_timeout_ms=5_000,
            reconnect_backoff_max_ms=2_000,
        )
        config.update(overrides)
        return KafkaProducer(**config)

    def consumer(self, group_id: str, shorts: Iterable[str], **overrides: Any) -> KafkaConsumer:
        config: dict[str, Any] = dict(
            bootstrap_servers=self.settings.kafka_bootstrap,
            client_id=f"{self.client_id}-{group_id}",
            group_id=self.group(group_id),
            session_timeout_ms=6000,
            heartbeat_interval_ms=1000,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            max_poll_records=200,
            reconnect_backoff_max_ms=2_000,
        )
        config.update(overrides)
        consumer = KafkaConsumer(**config)
        consumer.subscribe([self.topic(s) for s in shorts])
        return consumer

    def send_sync(self, producer: KafkaProducer, short: str, event: Event, timeout_s: float = 15.0) -> None:
        """Publish and wait for the broker's ack (workers that must not mark work done before it)."""
        producer.send(self.topic(short), event.to_bytes(), key=event.key()).get(timeout=timeout_s)

    def run_consumer(self, consumer: KafkaConsumer, handler: Handler, *, stop: threading.Event,
                     dead_letter_producer: KafkaProducer, **kwargs: Any) -> None:
        run_consumer(consumer, handler, stop=stop, dead_letter_producer=dead_letter_producer,
                     topic_prefix=self.settings.topic_prefix, **kwargs)


def _partition_counts(admin: KafkaAdminClient, topics: list[str]) -> dict[str, int]:
    """Partitions per existing topic (missing topics are left out)."""
    return {t["name"]: len(t["partitions"]) for t in admin.describe_topics(topics)
            if t.get("error_code", 0) == 0 and t.get("partitions")}


def _classifier_of(key: bytes | None) -> str:
    try:
        return key.decode() if key else "unknown"
    except UnicodeDecodeError:
        return "unknown"


def _payload_text(value: bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", errors="replace")


def run_consumer(
    consumer: KafkaConsumer,
    handler: Handler,
    *,
    stop: threading.Event,
    dead_letter_producer: KafkaProducer,
    topic_prefix: str = "sift.",
    max_attempts: int = 5,
    backoff_s: float = 0.2,
    max_backoff_s: float = 5.0,
    poll_timeout_ms: int = 500,
    attempts: dict[tuple[TopicPartition, int], int] | None = None,
    until: threading.Event | None = None,
) -> None:
    """Consume until ``stop`` is set: parse, handle, then commit that record's offset alone.

    ``until`` ends a round at the next poll boundary, every record already polled handled: the
    consumer's position stays exactly after them, so the next round continues with what the
    consumer has fetched. (Ending rounds mid-batch and rewinding to the committed offsets threw
    the fetched records away each round; with a backlog on the partition fetched first, the others
    were never reached: the review worker starved a partition for as long as traffic flowed.)

    - unparsable record, or handler raises PermanentError → dead-letter, commit, carry on;
    - TransientError / broker or network errors → seek back to the record, back off, retry it
      (nothing committed; other partitions keep going);
    - any other exception is retried ``max_attempts`` times, then dead-lettered, so a bug that
      fails one record cannot block its partition forever.

    Commits are synchronous per record: at-least-once with the smallest redelivery window.
    A caller that stops and restarts the loop (the review worker, every tick) passes its own
    ``attempts`` dict, so the count of a failing record survives the restart and the dead-letter
    rule still fires.
    """
    dl_topic = topic_prefix + TOPIC_DEAD_LETTER
    attempts = {} if attempts is None else attempts
    failures = 0

    def short(topic: str) -> str:
        return topic[len(topic_prefix):] if topic_prefix and topic.startswith(topic_prefix) else topic

    def dead_letter(record: Any, error: str) -> None:
        dl = DeadLetter(
            classifier=_classifier_of(record.key),
            original_topic=record.topic,
            payload=_payload_text(record.value),
            error=error[:4000],
        )
        # wait for the ack: the poison record is committed only once its copy is safe
        dead_letter_producer.send(dl_topic, dl.to_bytes(), key=dl.key()).get(timeout=15)
        count_dead_letter(record.topic, error)
        log.warning("dead-lettered %s@%s:%s: %s", record.topic, record.partition, record.offset, error)

    def commit(tp: TopicPartition, offset: int) -> None:
        try:
            consumer.commit({tp: OffsetAndMetadata(offset + 1, None, -1)})
        except KafkaError:
            # the side effect is done; the record may come again after a rebalance: dedupe covers it
            log.warning("commit of %s:%s failed", tp, offset, exc_info=True)

    def process(record: Any) -> bool:
        """True when the record is finished (handled or dead-lettered) and may be committed."""
        tp = TopicPartition(record.topic, record.partition)
        try:
            event = parse_event(short(record.topic), record.value)
        except Exception as exc:  # noqa: BLE001 - any parse failure is permanent for this payload
            dead_letter(record, f"unparsable: {type(exc).__name__}: {exc}")
            return True
        try:
            handler(short(record.topic), event)
            return True
        except PermanentError as exc:
            dead_letter(record, f"permanent: {exc}")
            return True
        except _TRANSIENT:
            raise
        except Exception as exc:
            n = attempts.get((tp, record.offset), 0) + 1
            attempts[(tp, record.offset)] = n
            if n < max_attempts:
                raise TransientError(f"attempt {n}/{max_attempts}: {exc!r}") from exc
            dead_letter(record, f"failed {n} times: {type(exc).__name__}: {exc}")
            return True

    while not stop.is_set() and not (until is not None and until.is_set()):
        try:
            batches = consumer.poll(timeout_ms=poll_timeout_ms)
            export_lag(consumer)
        except KafkaError:
            log.warning("poll failed; backing off", exc_info=True)
            stop.wait(min(max_backoff_s, backoff_s * 2 ** min(failures, 8)))
            failures += 1
            continue
        retry = False
        for tp, records in batches.items():
            for record in records:
                if stop.is_set():
                    return  # uncommitted records are redelivered to whoever consumes next
                try:
                    done = process(record)
                except _TRANSIENT as exc:
                    log.warning("transient failure on %s:%s (%s); will retry", tp, record.offset, exc)
                    consumer.seek(tp, record.offset)
                    retry = True
                    break  # the rest of this partition's batch waits for this record
                if done:
                    attempts.pop((tp, record.offset), None)
                    commit(tp, record.offset)
        if retry:
            failures += 1
            stop.wait(min(max_backoff_s, backoff_s * 2 ** min(failures, 8)))
        else:
            failures = 0


def consumer_lag(settings: Settings, group_id: str, shorts: Iterable[str], timeout_s: float = 10.0) -> dict[str, int]:
    """Records each partition's high watermark is ahead of ``group_id``'s committed offset ("topic:partition");
    ``group_id`` is the short name (``Bus.group`` adds the prefix).

    Reads the committed offsets without joining the group (no rebalance of the real consumers) and
    learns the high watermark from one fetch, since ``end_offsets`` is wrong on Tansu.
    """
    bus = Bus(settings, client_id="sift-lag")
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, group_id=bus.group(group_id),
                             client_id=f"sift-lag-{group_id}", enable_auto_commit=False,
                             max_partition_fetch_bytes=1024, fetch_max_bytes=1024)
    try:
        tps = [TopicPartition(bus.topic(s), p) for s in shorts
               for p in sorted(consumer.partitions_for_topic(bus.topic(s)) or ())]
        if not tps:
            return {}
        consumer.assign(tps)
        committed = {tp: consumer.committed(tp) or 0 for tp in tps}
        for tp, offset in committed.items():
            consumer.seek(tp, offset)
        deadline = time.monotonic() + timeout_s
        while any(consumer.highwater(tp) is None for tp in tps) and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        return {f"{tp.topic}:{tp.partition}": max(0, (consumer.highwater(tp) or 0) - committed[tp]) for tp in tps}
    finally:
        consumer.close()


def tail(bus: Bus, shorts: Iterable[str], handler: Handler, *, stop: threading.Event,
         backoff_s: float = 0.5, max_backoff_s: float = 5.0, poll_timeout_ms: int = 500,
         on_assigned: Callable[[], None] | None = None) -> None:
    """Follow every partition of ``shorts`` from their ends, without a consumer group, until ``stop``.

    For notifications every process must see (promotions, tenant changes): each reader gets all
    partitions, nothing is committed, no group is left behind, and nothing before the start is
    replayed (the reader loads current state itself when it starts). Positions survive a broken
    client, so events published while reconnecting are still read. A handler failure is retried on
    the same record with backoff (the handlers are idempotent); unparsable records are skipped.
    ``on_assigned`` runs once the first consumer has its positions (tests wait on it).
    """
    shorts = list(shorts)
    positions: dict[TopicPartition, int] = {}
    failures = 0
    while not stop.is_set():
        consumer: KafkaConsumer | None = None
        try:
            consumer = KafkaConsumer(bootstrap_servers=bus.settings.kafka_bootstrap, group_id=None,
                                     client_id=f"{bus.client_id}-tail", enable_auto_commit=False,
                                     reconnect_backoff_max_ms=2_000)
            tps = [tp for s in shorts for tp in bus.partitions(consumer, s)]
            if not tps:
                raise TransientError(f"topics {shorts} not found")
            consumer.assign(tps)
            fresh = [tp for tp in tps if tp not in positions]
            if fresh:
                consumer.seek_to_end(*fresh)
            for tp in tps:
                if tp in positions:
                    consumer.seek(tp, positions[tp])
                else:
                    positions[tp] = consumer.position(tp)
            if on_assigned is not None:
                on_assigned()
                on_assigned = None
            while not stop.is_set():
                retry = False
                for tp, records in consumer.poll(timeout_ms=poll_timeout_ms).items():
                    for record in records:
                        try:
                            event = parse_event(bus.short(record.topic), record.value)
                        except Exception as exc:  # noqa: BLE001 - a bad record is skipped, not retried
                            log.warning("skipping unparsable %s:%s: %s", tp, record.offset, exc)
                            positions[tp] = record.offset + 1
                            continue
                        try:
                            handler(bus.short(record.topic), event)
                        except Exception as exc:  # noqa: BLE001 - retried: the handlers are idempotent
                            log.warning("handling %s:%s failed (%s); will retry", tp, record.offset, exc)
                            consumer.seek(tp, record.offset)
                            retry = True
                            break
                        positions[tp] = record.offset + 1
                if retry:
                    failures += 1
                    stop.wait(min(max_backoff_s, backoff_s * 2 ** min(failures, 8)))
                else:
                    failures = 0
        except Exception:  # noqa: BLE001 - the broker may be away: rebuild the client, keep positions
            log.warning("tail of %s failed; retrying", shorts, exc_info=True)
            failures += 1
            stop.wait(min(max_backoff_s, backoff_s * 2 ** min(failures, 8)))
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
