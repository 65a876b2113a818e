"""Dead letters an operator can act on: list, show, replay, purge.

The dead-letter topic is append-only (and Tansu cannot delete records), so what an operator did to
a dead letter is kept beside it in the object store: ``dead-letters/<topic>/<id>.json`` says
``replayed`` or ``purged``. An id is ``<partition>-<offset>`` of the dead letter, stable for the
topic's life. Replay re-publishes the original payload, byte for byte, to its original topic with
acks=all: the event keeps its ``event_id``, so a consumer that already handled it dedupes it, and
replaying twice is harmless.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Literal

from kafka import KafkaConsumer, TopicPartition
from pydantic import BaseModel

from infra.bus import Bus
from infra.events import TOPIC_DEAD_LETTER, DeadLetter
from infra.metrics import dead_letter_reason
from infra.objectstore import ObjectStore
from infra.settings import Settings

STATE_PREFIX = "dead-letters/"
Status = Literal["open", "replayed", "purged"]


class DeadLetterEntry(BaseModel):
    """One record of the dead-letter topic with what the operator did to it."""

    id: str
    partition: int
    offset: int
    classifier: str
    original_topic: str
    reason: str
    error: str
    event_id: str | None
    first_seen: datetime
    status: Status = "open"
    status_at: datetime | None = None
    payload: str

    def summary(self) -> dict[str, object]:
        return self.model_dump(mode="json", exclude={"payload", "error"})

    def why_not_replayable(self) -> str | None:
        """A payload cut to fit the topic (too large) or with no known topic cannot be sent back as it is."""
        if self.original_topic == "unknown":
            return f"dead letter {self.id} names no original topic"
        try:
            json.loads(self.payload)
        except ValueError:
            return f"dead letter {self.id} holds no complete event (its payload was cut or is not JSON)"
        return None


class NotReplayable(ValueError):
    pass


class DeadLetterGroup(BaseModel):
    """Every dead letter of one original event: how often it failed, first and last seen."""

    event_id: str | None
    classifier: str
    original_topic: str
    reason: str
    attempts: int
    first_seen: datetime
    last_seen: datetime
    ids: list[str]
    status: Status


reason_of = dead_letter_reason


def _event_id(payload: str) -> str | None:
    try:
        value = json.loads(payload)
    except ValueError:
        return None
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return event_id if isinstance(event_id, str) else None


class DeadLetters:
    def __init__(self, settings: Settings, store: ObjectStore | None = None) -> None:
        self.settings = settings
        self.bus = Bus(settings, client_id="sift-dlq")
        self.store = store or ObjectStore(settings)

    # ------------------------------------------------------------------ reading
    def entries(self, *, classifier: str | None = None, include_closed: bool = False,
                timeout_s: float = 30.0) -> list[DeadLetterEntry]:
        """Every dead letter from the beginning of the topic, read up to its high watermark.

        No consumer group: reading leaves no trace and never moves a worker's offsets.
        """
        out = [e for e in self._read(timeout_s) if classifier is None or e.classifier == classifier]
        for entry in out:
            state = self.store.get_json(self._state_key(entry.id))
            if state:
                entry.status = state["status"]
                entry.status_at = state.get("at")
        return [e for e in out if include_closed or e.status == "open"]

    def groups(self, **kwargs: object) -> list[DeadLetterGroup]:
        by_event: dict[str, list[DeadLetterEntry]] = {}
        for entry in self.entries(**kwargs):  # type: ignore[arg-type]
            by_event.setdefault(entry.event_id or entry.id, []).append(entry)
        groups = []
        for members in by_event.values():
            last = members[-1]
            groups.append(DeadLetterGroup(
                event_id=last.event_id, classifier=last.classifier, original_topic=last.original_topic,
                reason=last.reason, attempts=len(members), first_seen=members[0].first_seen,
                last_seen=last.first_seen, ids=[m.id for m in members], status=last.status,
            ))
        return groups

    def select(self, ids: list[str], all_open: bool, classifier: str | None = None) -> list[DeadLetterEntry]:
        """The entries an operator named: ``ids`` (open or closed), or every open one with ``all_open``.

        Raises ValueError when neither is given, LookupError naming the ids that do not exist.
        """
        if not ids and not all_open:
            raise ValueError("name dead-letter ids or select all")
        entries = self.entries(classifier=classifier, include_closed=bool(ids))
        if all_open:
            return entries
        by_id = {e.id: e for e in entries}
        missing = [i for i in ids if i not in by_id]
        if missing:
            raise LookupError(f"no dead letter {', '.join(missing)}")
        return [by_id[i] for i in ids]

    def get(self, entry_id: str, timeout_s: float = 30.0) -> DeadLetterEntry | None:
        return next((e for e in self.entries(include_closed=True, timeout_s=timeout_s) if e.id == entry_id), None)

    def _read(self, timeout_s: float) -> list[DeadLetterEntry]:
        topic = self.bus.topic(TOPIC_DEAD_LETTER)
        consumer = KafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap, group_id=None,
                                 enable_auto_commit=False, client_id="sift-dlq-reader",
                                 consumer_timeout_ms=1000)
        try:
            partitions = consumer.partitions_for_topic(topic) or set()
            tps = [TopicPartition(topic, p) for p in sorted(partitions)]
            if not tps:
                return []
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            entries: list[DeadLetterEntry] = []
            deadline = time.monotonic() + timeout_s
            while True:
                for tp, records in consumer.poll(timeout_ms=300).items():
                    entries.extend(self._entry(tp.partition, r.offset, r.value) for r in records)
                # end_offsets is wrong on Tansu: the high watermark of the last fetch is not
                done = all(consumer.highwater(tp) is not None and consumer.position(tp) >= consumer.highwater(tp)
                           for tp in tps)
                if done:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"could not read {topic} to its end within {timeout_s:.0f} s")
            return sorted(entries, key=lambda e: (e.first_seen, e.partition, e.offset))
        finally:
            consumer.close()

    @staticmethod
    def _entry(partition: int, offset: int, value: bytes) -> DeadLetterEntry:
        try:
            dl = DeadLetter.model_validate_json(value)
        except ValueError:
            # a record that is not even a dead letter is still shown, never dropped
            dl = DeadLetter(original_topic="unknown", payload=value.decode("utf-8", "replace"),
                            error="unparsable: not a dead-letter record")
        return DeadLetterEntry(
            id=f"{partition}-{offset}", partition=partition, offset=offset, classifier=dl.classifier,
            original_topic=dl.original_topic, reason=reason_of(dl.error), error=dl.error,
            event_id=_event_id(dl.payload), first_seen=dl.first_seen, payload=dl.payload,
        )

    # ------------------------------------------------------------------ acting
    def replay(self, entries: Iterable[DeadLetterEntry]) -> list[str]:
        """Publish each payload to its original topic (acked), then mark it replayed; returns ids."""
        entries = list(entries)
        refused = [why for why in (e.why_not_replayable() for e in entries) if why]
        if refused:
            raise NotReplayable("; ".join(refused))
        producer = self.bus.producer()
        done = []
        try:
            for entry in entries:
                producer.send(entry.original_topic, entry.payload.encode(),
                              key=entry.classifier.encode()).get(timeout=15)
                self._mark(entry.id, "replayed")
                done.append(entry.id)
        finally:
            producer.close(timeout=5)
        return done

    def purge(self, entries: Iterable[DeadLetterEntry]) -> list[str]:
        """Hide dead letters from the list; the records themselves age out with the topic's retention."""
        ids = []
        for entry in entries:
            self._mark(entry.id, "purged")
            ids.append(entry.id)
        return ids

    def _state_key(self, entry_id: str) -> str:
        return f"{STATE_PREFIX}{self.bus.topic(TOPIC_DEAD_LETTER)}/{entry_id}.json"

    def _mark(self, entry_id: str, status: Status) -> None:
        self.store.put_json(self._state_key(entry_id), {"status": status, "at": datetime.now(UTC).isoformat()})
