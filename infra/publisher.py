"""Event publishing with two guarantees to pick from: fire-and-forget, or durable before return.

``publish`` (fire-and-forget; the low-confidence classify path) only serializes the event and
puts it on an in-memory queue. A sender thread hands queued events to the Kafka producer
(asynchronous, acks=all); an event the broker does not ack — broker down, producer not
creatable, delivery timeout — is appended to the durable ``Spool`` and redelivered by the same
thread once the broker answers again, including spool rows left by a previous run of the
process. Events keep their ``event_id``, so the at-least-once redelivery is exactly-once in
effect after the consumer's dedupe.

Window of loss of ``publish``: events still in memory (queue, producer buffer) when the *process*
is killed with SIGKILL. ``close()`` spools whatever is not acked, so a normal shutdown loses
nothing. Classify accepts that window: its review requests are a sample, and a broker round trip
per request would cost latency.

``publish_durable`` (explicit feedback: single and batch) closes that window. It returns only once
every event is acked by the broker (acks=all) or committed to the SQLite spool, and raises
``NotDurable`` when neither happened, so an API can answer 2xx only for feedback that will reach
the review queue (or the dead-letter topic) even if the process is SIGKILLed right after.
``submit_durable`` (single feedback) makes the same promise for one event without blocking: a
future resolved by group commit (see its docstring), so an async endpoint holds no thread.

Poison events never block: an event the broker can never take — larger than
``settings.kafka_max_record_bytes`` (checked before it reaches the producer, so also while the
broker is down), refused by the producer or the broker as too large / invalid, or not even
serialisable — is replaced by a bounded ``DeadLetter`` naming the reason, which then travels like
any other record (acked or spooled). Before this rule, one 2 MB event spooled as "broker down"
stopped the drain at that row, and every later event of the replica stayed in the spool.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from kafka import errors as kafka_errors
from pydantic import BaseModel

from infra.alerts import Alert, Episode, send_alert_later
from infra.bus import Bus
from infra.events import TOPIC_DEAD_LETTER, DeadLetter, Event, new_id
from infra.metrics import count_dead_letter, watch_spool
from infra.settings import Settings
from infra.spool import Spool, SpooledRecord

log = logging.getLogger(__name__)


class NotDurable(RuntimeError):
    """Some events were neither acked by the broker nor committed to the spool; the message says why."""


class DurableOutcome(BaseModel):
    acked: int  # acked by the broker
    spooled: int  # committed to the spool (delivered later, same event_id)
    dead_lettered: int = 0  # could never be delivered; their DeadLetter is acked or spooled instead


# producer / broker errors that no retry can fix: the record goes to the dead-letter topic
NON_RETRIABLE = (
    kafka_errors.MessageSizeTooLargeError,
    kafka_errors.RecordListTooLargeError,
    kafka_errors.InvalidTopicError,
    kafka_errors.CorruptRecordError,
    kafka_errors.InvalidRequestError,
    kafka_errors.UnsupportedForMessageFormatError,
    TypeError,
    ValueError,
)
# the original payload kept in a DeadLetter: enough to see what it was, far under any record limit
DEAD_LETTER_PAYLOAD_CHARS = 64 * 1024


def non_retriable(exc: BaseException) -> bool:
    return isinstance(exc, NON_RETRIABLE)


def refusal(exc: BaseException, by: str) -> str:
    """A DeadLetter error whose first word is its kind (``too-large`` / ``refused``), as ops groups them."""
    too_large = isinstance(exc, kafka_errors.MessageSizeTooLargeError | kafka_errors.RecordListTooLargeError)
    return f"{'too-large' if too_large else 'refused'}: by {by}: {exc!r}"


@dataclass
class _Waiting:
    """One ``submit_durable`` event waiting for its group."""

    record: SpooledRecord
    dead: bool
    deadline: float
    future: Future[DurableOutcome]
    done: bool = False  # claimed by an ack or by the spool path (under the publisher's _waiting_lock)


@dataclass
class _Commit:
    acked: list[bool]  # per record
    dead: list[bool]  # per record: its DeadLetter went instead
    lost: list[int]  # records neither acked nor spooled (the spool write failed)
    error: str | None  # why, when ``lost``


# part of publish_durable's timeout kept for the spool write when the broker does not ack in time
SPOOL_RESERVE_S = 0.5


class PublisherStats(BaseModel):
    sent: int  # acked by the broker (direct or from the spool)
    spooled: int  # written to the spool by this process
    redelivered: int  # spool rows acked by the broker (counted in `sent` too)
    dropped: int  # could not even be spooled (disk failure) — should stay 0
    dead_lettered: int  # could never be delivered; sent to the dead-letter topic instead
    pending: int  # queued + in flight + rows in the spool
    spool_rows: int
    broker_up: bool
    groups: int = 0  # group commits of submit_durable events (events per group = their mean size)


class EventPublisher:
    def __init__(
        self,
        settings: Settings,
        *,
        bus: Bus | None = None,
        spool: Spool | None = None,
        queue_size: int = 10_000,
        max_inflight: int = 5_000,
        ensure_topics: bool = True,
        producer_overrides: dict[str, Any] | None = None,
    ) -> None:
        self.settings = settings
        self.bus = bus or Bus(settings, client_id="sift-publisher")
        self.spool = spool or Spool(settings.spool_dir)
        watch_spool(self.spool)
        self._ensure_topics = ensure_topics
        self._producer_overrides = producer_overrides or {}
        self._queue: queue.Queue[SpooledRecord] = queue.Queue(queue_size)
        self._inflight: dict[int, SpooledRecord] = {}
        self._inflight_lock = threading.Lock()
        # bounds unacked sends: each holds Python futures/callbacks (~2 KB), beyond the producer's byte buffer
        self._inflight_room = threading.Condition(self._inflight_lock)
        self._max_inflight = max_inflight
        self._tokens = itertools.count()
        self._producer: Any = None
        self._up = False
        self._closing = threading.Event()
        self._sent = self._spooled = self._redelivered = self._dropped = self._dead_lettered = self._groups = 0
        self._max_record_bytes = settings.kafka_max_record_bytes
        self._counter_lock = threading.Lock()
        self._spool_rows = len(self.spool)
        self._spool_alarm = Episode()
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()
        self._group_queue: queue.SimpleQueue[_Waiting] = queue.SimpleQueue()
        self._group_lock = threading.Lock()
        # submitted events sent and not yet resolved, in send order (so deadline order: one timeout per caller)
        self._waiting: collections.OrderedDict[int, _Waiting] = collections.OrderedDict()
        self._waiting_lock = threading.Lock()
        self._unacked: list[tuple[_Waiting, BaseException]] = []  # failed sends, handled by the group thread
        self._close_deadline = float("inf")  # while closing: sent events may still be acked until then
        self._group_thread = threading.Thread(target=self._group_run, name="event-group-commit", daemon=True)
        self._group_thread.start()

    # ---- caller side -------------------------------------------------------------------------

    def _record(self, short_topic: str, event: Event) -> SpooledRecord:
        """The record for ``event``, or its DeadLetter when it is unserialisable or too large."""
        topic = self.bus.topic(short_topic)
        event_id = getattr(event, "event_id", None)
        try:
            value = event.to_bytes()
        except Exception as exc:  # e.g. a lone surrogate in a text: no retry will serialise it
            payload = json.dumps(event.model_dump(mode="python"), default=str, ensure_ascii=True)
            return self._dead_letter(SpooledRecord(topic=topic, key=event.key(), value=payload.encode(),
                                                   event_id=event_id),
                                     f"unserialisable: {type(exc).__name__}: {exc}")
        record = SpooledRecord(topic=topic, key=event.key(), value=value, event_id=event_id)
        return self._checked(record)

    def _checked(self, record: SpooledRecord) -> SpooledRecord:
        """``record``, or its DeadLetter when it is over the record size limit."""
        size = len(record.value) + len(record.key or b"")
        if size > self._max_record_bytes:
            return self._dead_letter(record, f"too-large: {size} bytes, the limit is {self._max_record_bytes} "
                                             "(SIFT_KAFKA_MAX_RECORD_BYTES)")
        return record

    def _dead_letter(self, record: SpooledRecord, reason: str) -> SpooledRecord:
        """A bounded DeadLetter record standing in for ``record``, which can never be delivered."""
        self._count(dead_lettered=1)
        count_dead_letter(record.topic, reason)
        log.error("event %s for %s cannot be delivered (%s): dead-lettered", record.event_id, record.topic, reason)
        text = record.value.decode("utf-8", errors="replace")
        if len(text) > DEAD_LETTER_PAYLOAD_CHARS:
            reason += f"; payload cut to its first {DEAD_LETTER_PAYLOAD_CHARS} of {len(text)} characters"
            text = text[:DEAD_LETTER_PAYLOAD_CHARS]
        try:
            classifier = (record.key or b"unknown").decode()
        except UnicodeDecodeError:
            classifier = "unknown"
        dl = DeadLetter(
            event_id=record.event_id or new_id(),
            classifier=classifier, original_topic=record.topic, payload=text, error=reason[:4000],
        )
        return SpooledRecord(topic=self.bus.topic(TOPIC_DEAD_LETTER), key=dl.key(), value=dl.to_bytes(),
                             event_id=dl.event_id)

    def publish_durable(self, short_topic: str, events: Event | Sequence[Event], *,
                        timeout: float = 5.0) -> DurableOutcome:
        """Return once each event is acked by the broker or committed to the spool; else raise.

        While the broker looks up, the events are sent at once and their acks awaited until
        ``timeout`` (less a reserve for the spool write); whatever is not acked by then — broker
        down, slow, or unknown — is committed to the spool in one transaction, and the sender
        thread redelivers it. An event both acked late and spooled reaches the topic twice with
        the same ``event_id``: consumers dedupe. Raises ``NotDurable`` (nothing of this call is
        left only in memory) when the spool write fails too; a serialization bug raises as is.
        Blocking by design: call it from a worker thread, not the event loop (or use ``submit_durable``).
        """
        batch = [events] if isinstance(events, Event) else list(events)
        records = [self._record(short_topic, ev) for ev in batch]
        if not records:
            return DurableOutcome(acked=0, spooled=0)
        dead = self._dead_flags(short_topic, records)
        commit = self._commit(records, dead, time.monotonic() + timeout)
        if commit.error is not None:
            raise NotDurable(f"{len(commit.lost)} of {len(records)} events {commit.error}")
        return DurableOutcome(acked=sum(commit.acked), spooled=len(records) - sum(commit.acked),
                              dead_lettered=sum(commit.dead))

    def submit_durable(self, short_topic: str, event: Event, *, timeout: float = 5.0) -> Future[DurableOutcome]:
        """``publish_durable`` for one event without blocking: a future the group sender resolves.

        Group commit: one sender thread hands whatever was submitted since its last pass to the
        producer as one group (the producer's 5 ms linger packs concurrent groups into shared
        produce requests) and waits for none of it: each ack resolves its own future from the
        producer's network thread at once. Failed sends and sends not acked by their deadline (less
        the spool reserve) are spooled together, one transaction per pass, then resolved; a record
        the broker refuses for good is resent as its DeadLetter. The future's result is the event's
        own ``DurableOutcome``; its exception ``NotDurable`` when neither broker nor spool took it.
        Await it with ``asyncio.wrap_future``: no thread is held per waiting request.
        """
        record = self._record(short_topic, event)
        item = _Waiting(record, self._dead_flags(short_topic, [record])[0], time.monotonic() + timeout, Future())
        with self._group_lock:  # close() flips _closing under this lock: nothing is queued after the thread left
            if not self._closing.is_set():
                self._group_queue.put(item)
                return item.future
        self._commit_group([item])  # closing: straight to the spool, in the caller's thread
        return item.future

    def _dead_flags(self, short_topic: str, records: list[SpooledRecord]) -> list[bool]:
        """Which records already stand for a dead-lettered event (not when the caller publishes DeadLetters)."""
        dl_topic = self.bus.topic(TOPIC_DEAD_LETTER)
        return [short_topic != TOPIC_DEAD_LETTER and r.topic == dl_topic for r in records]

    def _commit(self, records: list[SpooledRecord], dead: list[bool], deadline: float) -> _Commit:
        """Send ``records``, wait for their acks, spool whatever is not acked by ``deadline`` in one
        transaction.

        ``dead`` is updated in place for records the producer or broker refuses for good (their
        DeadLetter travels instead). Never raises for the broker or the spool: the result says
        which records were acked, and which were lost with ``error`` when the spool write failed.
        """
        dl_topic = self.bus.topic(TOPIC_DEAD_LETTER)
        acked = [False] * len(records)
        pending: list[tuple[int, SpooledRecord]] = list(enumerate(records))
        why = "broker unavailable"
        producer = self._producer
        if (producer is not None and self._up and not self._closing.is_set()
                and deadline - SPOOL_RESERVE_S > time.monotonic()):
            futures: list[tuple[int, SpooledRecord, Any]] = []
            unsent: list[tuple[int, SpooledRecord]] = []
            todo = collections.deque(pending)
            while todo:
                i, r = todo.popleft()
                try:
                    futures.append((i, r, producer.send(r.topic, r.value, key=r.key)))
                except Exception as exc:
                    if non_retriable(exc) and r.topic != dl_topic:  # this record only: its DeadLetter instead
                        todo.appendleft((i, self._dead_letter(r, refusal(exc, "the producer"))))
                        dead[i] = True
                        continue
                    why = f"send failed: {exc!r}"  # metadata or buffer wait ran out: the broker is not there
                    unsent = [(i, r), *todo]
                    break
            failed: list[tuple[int, SpooledRecord]] = []
            broker_trouble = False
            for i, r, f in futures:
                try:
                    f.get(timeout=max(0.0, deadline - SPOOL_RESERVE_S - time.monotonic()))
                    acked[i] = True
                except Exception as exc:
                    if non_retriable(exc) and r.topic != dl_topic:  # refused by the broker: spool its DeadLetter
                        failed.append((i, self._dead_letter(r, refusal(exc, "the broker"))))
                        dead[i] = True
                        continue
                    why = f"no ack: {exc!r}"
                    failed.append((i, r))
                    broker_trouble = True
            pending = failed + unsent
            if broker_trouble or unsent:
                self._up = False  # next calls go straight to the spool until the sender sees the broker
        n_acked = sum(acked)
        self._count(sent=n_acked)
        if not pending:
            return _Commit(acked, dead, [], None)
        try:
            self.spool.append([r for _, r in pending])
        except Exception as exc:
            log.error("%d of %d events neither acked (%s) nor spooled (%r)", len(pending), len(records), why, exc)
            return _Commit(acked, dead, [i for i, _ in pending],
                           f"were neither acknowledged by the broker ({why}) nor written to the local spool ({exc})")
        self._count(spooled=len(pending), spool_rows=len(pending))
        return _Commit(acked, dead, [], None)

    def _resolve(self, group: list[_Waiting], outcome: _Commit) -> None:
        """Give each waiter of a committed group its own outcome."""
        lost = set(outcome.lost)
        for i, w in enumerate(group):
            if i in lost:
                w.future.set_exception(NotDurable(f"this event and {len(lost) - 1} other(s) of its group "
                                                  f"{outcome.error}"))
            else:
                w.future.set_result(DurableOutcome(acked=int(outcome.acked[i]), spooled=int(not outcome.acked[i]),
                                                   dead_lettered=int(outcome.dead[i])))

    def _commit_group(self, group: list[_Waiting]) -> None:
        """Commit ``group`` the blocking way (while closing: straight to the spool)."""
        self._resolve(group, self._commit([w.record for w in group], [w.dead for w in group],
                                          min(w.deadline for w in group)))

    def _spool_group(self, group: list[_Waiting], why: str) -> None:
        """One spool transaction for claimed waiters the broker did not ack; resolve them."""
        if not group:
            return
        try:
            self.spool.append([w.record for w in group])
        except Exception as exc:
            log.error("%d events neither acked (%s) nor spooled (%r)", len(group), why, exc)
            self._resolve(group, _Commit([False] * len(group), [w.dead for w in group], list(range(len(group))),
                                         f"were neither acknowledged by the broker ({why}) nor written to the "
                                         f"local spool ({exc})"))
            return
        self._count(spooled=len(group), spool_rows=len(group))
        self._resolve(group, _Commit([False] * len(group), [w.dead for w in group], [], None))

    def _acked_waiter(self, w: _Waiting) -> None:
        """Producer callback (its network thread): the event is on the broker — answer at once."""
        with self._waiting_lock:
            if w.done:
                return  # already spooled after its deadline: the late ack is a duplicate, deduped downstream
            w.done = True
            self._waiting.pop(id(w), None)
        self._count(sent=1)
        w.future.set_result(DurableOutcome(acked=1, spooled=0, dead_lettered=int(w.dead)))

    def _failed_waiter(self, w: _Waiting, exc: BaseException) -> None:
        """Producer errback: hand the event back to the group thread (spool, or its DeadLetter)."""
        with self._waiting_lock:
            if w.done:
                return
            w.done = True
            self._waiting.pop(id(w), None)
            self._unacked.append((w, exc))

    def _send_group(self, group: list[_Waiting]) -> None:
        """Hand a group to the producer without waiting: each ack resolves its own waiter."""
        self._count(groups=1)
        producer = self._producer
        if producer is None or not self._up or self._closing.is_set():
            for w in group:
                w.done = True
            self._spool_group(group, "broker unavailable")
            return
        dl_topic = self.bus.topic(TOPIC_DEAD_LETTER)
        todo = collections.deque(group)
        while todo:
            w = todo.popleft()
            try:
                future = producer.send(w.record.topic, w.record.value, key=w.record.key)
            except Exception as exc:
                if non_retriable(exc) and w.record.topic != dl_topic:  # this record only: its DeadLetter instead
                    w.record, w.dead = self._dead_letter(w.record, refusal(exc, "the producer")), True
                    todo.appendleft(w)
                    continue
                self._up = False  # metadata or buffer wait ran out: the broker is not there
                rest = [w, *todo]
                for r in rest:
                    r.done = True
                self._spool_group(rest, f"send failed: {exc!r}")
                return
            with self._waiting_lock:
                self._waiting[id(w)] = w
            future.add_callback(lambda _md, w=w: self._acked_waiter(w))
            future.add_errback(lambda exc, w=w: self._failed_waiter(w, exc))

    def _settle_unacked(self) -> None:
        """Spool, in one transaction, the failed sends and the sends past their deadline; resend refusals
        as DeadLetters."""
        now = time.monotonic()
        with self._waiting_lock:
            failed, self._unacked = self._unacked, []
            expired: list[_Waiting] = []
            while self._waiting:
                w = next(iter(self._waiting.values()))
                if w.deadline - SPOOL_RESERVE_S > now and (not self._closing.is_set() or now < self._close_deadline):
                    break
                w.done = True
                expired.append(self._waiting.pop(id(w)))
        dl_topic = self.bus.topic(TOPIC_DEAD_LETTER)
        resend: list[_Waiting] = []
        to_spool = list(expired)
        why = "no ack before the deadline" if expired else ""
        for w, exc in failed:
            if non_retriable(exc) and w.record.topic != dl_topic:  # refused by the broker: its DeadLetter instead
                w.record, w.dead, w.done = self._dead_letter(w.record, refusal(exc, "the broker")), True, False
                resend.append(w)
            else:
                why = f"no ack: {exc!r}"
                to_spool.append(w)
        if to_spool:
            self._up = False  # next groups go straight to the spool until the sender sees the broker
            log.warning("%d events not acked (%s); spooled", len(to_spool), why)
            self._spool_group(to_spool, why)
        if resend:
            self._send_group(resend)

    def _group_run(self, limit: int = 2_000) -> None:
        """The group sender: whatever queued since its last pass goes to the producer as one group."""
        while True:
            try:
                group = [self._group_queue.get(timeout=0.01 if self._waiting or self._unacked else 0.1)]
            except queue.Empty:
                group = []
            while group and len(group) < limit:
                try:
                    group.append(self._group_queue.get_nowait())
                except queue.Empty:
                    break
            try:
                if group:
                    self._send_group(group)
                self._settle_unacked()
            except Exception as exc:  # a bug: the waiters of this group hear of it rather than hang
                log.exception("group commit of %d events failed", len(group))
                for w in group:
                    if not w.future.done():
                        w.future.set_exception(exc)
            if self._closing.is_set() and not group and not self._waiting and not self._unacked:
                return  # submit_durable queues nothing once _closing is set

    def publish(self, short_topic: str, event: Event, *, block_s: float = 0.0) -> None:
        """Queue the event for the broker; never raises for the broker.

        Returns at once by default (request paths). Bulk producers (batch uploads) pass ``block_s``
        to wait that long for queue room — backpressure while the broker keeps up — before the
        event goes to the spool instead.
        """
        try:
            record = self._record(short_topic, event)
        except Exception:  # a bug in the event itself: loud, but never the caller's failure
            log.exception("could not serialize event for %s", short_topic)
            return
        if self._closing.is_set():
            self._to_spool([record])
            return
        try:
            if block_s > 0:
                self._queue.put(record, timeout=block_s)
            else:
                self._queue.put_nowait(record)
        except queue.Full:
            # the sender is stuck (broker slow): the disk takes it, still without waiting on Kafka
            self._to_spool([record])

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until every accepted event is acked by the broker (spool included); True if so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._queue.unfinished_tasks == 0 and not self._inflight and self._spool_rows == 0:
                return True
            time.sleep(0.05)
        return False

    def stats(self) -> PublisherStats:
        with self._inflight_lock:
            inflight = len(self._inflight)
        return PublisherStats(
            sent=self._sent, spooled=self._spooled, redelivered=self._redelivered, dropped=self._dropped,
            dead_lettered=self._dead_lettered,
            pending=self._queue.qsize() + inflight + self._spool_rows, spool_rows=self._spool_rows,
            broker_up=self._up, groups=self._groups,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Hand queued events to the broker for up to ``timeout``; spool what is still unacked."""
        if self._closing.is_set():
            return
        deadline = time.monotonic() + timeout
        with self._group_lock:
            self._close_deadline = deadline - SPOOL_RESERVE_S
            self._closing.set()
        self._group_thread.join(max(0.1, deadline - time.monotonic()))  # queued events spooled at once
        with self._waiting_lock:  # only when the group thread did not finish in time
            left = list(self._waiting.values()) + [w for w, _ in self._unacked]
            self._waiting.clear()
            self._unacked = []
            for w in left:
                w.done = True
        self._spool_group(left, "closing")
        stranded: list[_Waiting] = []
        while True:  # only when the group thread did not finish in time
            try:
                stranded.append(self._group_queue.get_nowait())
            except queue.Empty:
                break
        if stranded:
            self._commit_group(stranded)
        self._thread.join(max(0.1, deadline - time.monotonic()))
        leftovers: list[SpooledRecord] = []
        while True:
            try:
                leftovers.append(self._queue.get_nowait())
                self._queue.task_done()
            except queue.Empty:
                break
        producer = self._producer
        if producer is not None:
            try:
                producer.flush(timeout=max(0.0, deadline - time.monotonic()))
            except Exception:
                log.info("producer flush at close did not finish", exc_info=True)
        with self._inflight_lock:
            leftovers.extend(self._inflight.values())
            self._inflight.clear()
        self._to_spool(leftovers)
        if producer is not None:
            try:
                producer.close(timeout=1)
            except Exception:
                log.info("producer close failed", exc_info=True)
        self.spool.close()

    # ---- sender thread -----------------------------------------------------------------------

    def _count(self, **deltas: int) -> None:
        with self._counter_lock:
            for name, n in deltas.items():
                setattr(self, f"_{name}", getattr(self, f"_{name}") + n)

    def _to_spool(self, records: list[SpooledRecord]) -> None:
        if not records:
            return
        try:
            self.spool.append(records)
            self._count(spooled=len(records), spool_rows=len(records))
        except Exception:
            self._count(dropped=len(records))
            log.exception("could not spool %d events: they are lost", len(records))

    def _connect(self) -> bool:
        try:
            self._producer = self.bus.producer(**self._producer_overrides)
        except Exception as exc:
            log.warning("broker unavailable (%s); events go to the spool", exc)
            return False
        if self._ensure_topics:
            try:
                self.bus.ensure_topics()
            except Exception:
                log.warning("could not ensure topics", exc_info=True)
        return True

    def _send(self, record: SpooledRecord) -> None:
        token = next(self._tokens)
        with self._inflight_room:
            while len(self._inflight) >= self._max_inflight and not self._closing.is_set():
                self._inflight_room.wait(0.1)
            self._inflight[token] = record
        try:
            future = self._producer.send(record.topic, record.value, key=record.key)
        except Exception as exc:  # metadata or buffer wait ran out: the broker is not there
            self._failed(token, exc)
            return
        future.add_callback(lambda _md, t=token: self._acked(t))
        future.add_errback(lambda exc, t=token: self._failed(t, exc))

    def _acked(self, token: int) -> None:
        with self._inflight_room:
            found = self._inflight.pop(token, None)
            self._inflight_room.notify()
        if found is not None:
            self._count(sent=1)

    def _failed(self, token: int, exc: BaseException) -> None:
        with self._inflight_room:
            record = self._inflight.pop(token, None)
            self._inflight_room.notify()
        if record is None:
            return  # already spooled by close()
        if non_retriable(exc) and record.topic != self.bus.topic(TOPIC_DEAD_LETTER):
            self._to_spool([self._dead_letter(record, refusal(exc, "Kafka"))])  # the broker is fine: keep _up
            return
        self._up = False
        log.warning("event %s not delivered (%s); spooled", record.event_id, exc)
        self._to_spool([record])

    def _check_spool_age(self) -> None:
        """Alert the operator once when the oldest spooled event waits too long (again after it drained)."""
        try:
            age = self.spool.oldest_age_s() or 0.0
        except Exception:  # noqa: BLE001 - a closed or broken spool is reported by its metrics
            return
        if self._spool_alarm.update(age > self.settings.spool_alert_age_seconds):
            send_alert_later(Alert(
                kind="spool_age", source="sift-publisher",
                message=f"{len(self.spool)} event(s) wait in the spool at {self.spool.path}, the oldest for "
                        f"{age:.0f} s: the broker is unreachable or refuses them",
                details={"spool": str(self.spool.path), "host": socket.gethostname(), "oldest_age_s": round(age),
                         "events": len(self.spool), "broker": self.settings.kafka_bootstrap}),
                operator_url=self.settings.alert_webhook_url)

    def _drain_once(self, batch: int = 500) -> bool:
        """Send the oldest spool rows and wait for their acks; True when all of them made it.

        A row the producer or broker refuses for good is replaced by its DeadLetter (spooled, then
        the row removed), so the drain goes around it instead of stopping there forever.
        """
        rows = self.spool.peek(batch)
        if not rows:
            with self._counter_lock:
                self._spool_rows = 0
            return True
        dl_topic = self.bus.topic(TOPIC_DEAD_LETTER)
        futures = []
        for r in rows:
            out = self._checked(r) if r.topic != dl_topic else r
            try:
                futures.append((r, out, self._producer.send(out.topic, out.value, key=out.key)))
            except Exception as exc:
                if not non_retriable(exc) or out.topic == dl_topic:
                    break
                futures.append((r, None, exc))
        done: list[int] = []
        replaced: list[SpooledRecord] = []
        for r, out, f in futures:
            assert r.seq is not None
            try:
                if out is None:
                    raise f
                f.get(timeout=30)
                done.append(r.seq)
            except Exception as exc:
                if not non_retriable(exc) or r.topic == dl_topic:
                    break
                replaced.append(self._dead_letter(r, refusal(exc, "Kafka")))
                done.append(r.seq)
        if replaced:
            self.spool.append(replaced)  # before the rows go: a crash in between repeats the DeadLetter only
        self.spool.remove(done)
        delivered = len(done) - len(replaced)
        self._count(sent=delivered, redelivered=delivered)
        self._spool_rows = len(self.spool)
        return len(done) == len(rows)

    def _take(self, limit: int = 500) -> list[SpooledRecord]:
        try:
            batch = [self._queue.get(timeout=0.05)]
        except queue.Empty:
            return []
        while len(batch) < limit:
            try:
                batch.append(self._queue.get_nowait())
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        backoff = 0.25
        next_try = next_refresh = next_age_check = 0.0
        drainer = False
        while not (self._closing.is_set() and self._queue.empty()):
            now = time.monotonic()
            if now >= next_age_check:
                next_age_check = now + 5.0
                self._check_spool_age()
            if self._producer is None and now >= next_try:
                self._up = self._connect()
                if not self._up:
                    next_try, backoff = now + backoff, min(backoff * 2, 5.0)
            batch = self._take()
            try:
                if self._producer is not None and self._up:
                    for record in batch:
                        self._send(record)
                else:
                    self._to_spool(batch)
            finally:
                for _ in batch:
                    self._queue.task_done()
            if self._closing.is_set() or self._producer is None:
                continue
            if now >= next_refresh:  # another process may have drained the shared spool
                self._spool_rows, next_refresh = len(self.spool), now + 1.0
            drainer = drainer or self.spool.try_become_drainer()
            if not drainer and not self._up and now >= next_try:
                self._up = True  # optimistic: the next failed send spools again and backs off
                next_try, backoff = now + backoff, min(backoff * 2, 5.0)
            elif drainer and (self._spool_rows > 0 or not self._up) and time.monotonic() >= next_try:
                try:
                    ok = self._drain_once()
                except Exception:
                    log.warning("spool redelivery failed", exc_info=True)
                    ok = False
                if ok:
                    self._up, backoff = True, 0.25
                else:
                    self._up = False
                    next_try, backoff = time.monotonic() + backoff, min(backoff * 2, 5.0)
