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
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel

from infra.bus import Bus
from infra.events import Event
from infra.settings import Settings
from infra.spool import Spool, SpooledRecord

log = logging.getLogger(__name__)


class NotDurable(RuntimeError):
    """Some events were neither acked by the broker nor committed to the spool; the message says why."""


class DurableOutcome(BaseModel):
    acked: int  # acked by the broker
    spooled: int  # committed to the spool (delivered later, same event_id)


# part of publish_durable's timeout kept for the spool write when the broker does not ack in time
SPOOL_RESERVE_S = 0.5


class PublisherStats(BaseModel):
    sent: int  # acked by the broker (direct or from the spool)
    spooled: int  # written to the spool by this process
    redelivered: int  # spool rows acked by the broker (counted in `sent` too)
    dropped: int  # could not even be spooled (disk failure) — should stay 0
    pending: int  # queued + in flight + rows in the spool
    spool_rows: int
    broker_up: bool


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
        self._sent = self._spooled = self._redelivered = self._dropped = 0
        self._counter_lock = threading.Lock()
        self._spool_rows = len(self.spool)
        self._thread = threading.Thread(target=self._run, name="event-publisher", daemon=True)
        self._thread.start()

    # ---- caller side -------------------------------------------------------------------------

    def _record(self, short_topic: str, event: Event) -> SpooledRecord:
        return SpooledRecord(
            topic=self.bus.topic(short_topic),
            key=event.key(),
            value=event.to_bytes(),
            event_id=getattr(event, "event_id", None),
        )

    def publish_durable(self, short_topic: str, events: Event | Sequence[Event], *,
                        timeout: float = 5.0) -> DurableOutcome:
        """Return once each event is acked by the broker or committed to the spool; else raise.

        While the broker looks up, the events are sent at once and their acks awaited until
        ``timeout`` (less a reserve for the spool write); whatever is not acked by then — broker
        down, slow, or unknown — is committed to the spool in one transaction, and the sender
        thread redelivers it. An event both acked late and spooled reaches the topic twice with
        the same ``event_id``: consumers dedupe. Raises ``NotDurable`` (nothing of this call is
        left only in memory) when the spool write fails too; a serialization bug raises as is.
        Blocking by design: call it from a worker thread, not the event loop.
        """
        batch = [events] if isinstance(events, Event) else list(events)
        records = [self._record(short_topic, ev) for ev in batch]
        if not records:
            return DurableOutcome(acked=0, spooled=0)
        deadline = time.monotonic() + timeout
        producer = self._producer
        pending = records
        acked = 0
        why = "broker unavailable"
        if producer is not None and self._up and not self._closing.is_set():
            futures: list[tuple[SpooledRecord, Any]] = []
            unsent: list[SpooledRecord] = []
            for i, r in enumerate(records):
                try:
                    futures.append((r, producer.send(r.topic, r.value, key=r.key)))
                except Exception as exc:  # metadata or buffer wait ran out: the broker is not there
                    why = f"send failed: {exc!r}"
                    unsent = records[i:]
                    break
            failed: list[SpooledRecord] = []
            for r, f in futures:
                try:
                    f.get(timeout=max(0.0, deadline - SPOOL_RESERVE_S - time.monotonic()))
                    acked += 1
                except Exception as exc:
                    why = f"no ack: {exc!r}"
                    failed.append(r)
            pending = failed + unsent
            if pending:
                self._up = False  # next calls go straight to the spool until the sender sees the broker
        if pending:
            try:
                self.spool.append(pending)
            except Exception as exc:
                self._count(sent=acked)
                log.error("%d of %d events neither acked (%s) nor spooled (%r)", len(pending), len(records), why,
                          exc)
                raise NotDurable(
                    f"{len(pending)} of {len(records)} events were neither acknowledged by the broker ({why}) "
                    f"nor written to the local spool ({exc})"
                ) from exc
            self._count(spooled=len(pending), spool_rows=len(pending))
        self._count(sent=acked)
        return DurableOutcome(acked=acked, spooled=len(pending))

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
            pending=self._queue.qsize() + inflight + self._spool_rows, spool_rows=self._spool_rows,
            broker_up=self._up,
        )

    def close(self, timeout: float = 10.0) -> None:
        """Hand queued events to the broker for up to ``timeout``; spool what is still unacked."""
        if self._closing.is_set():
            return
        deadline = time.monotonic() + timeout
        self._closing.set()
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
        self._up = False
        log.warning("event %s not delivered (%s); spooled", record.event_id, exc)
        self._to_spool([record])

    def _drain_once(self, batch: int = 500) -> bool:
        """Send the oldest spool rows and wait for their acks; True when all of them made it."""
        rows = self.spool.peek(batch)
        if not rows:
            with self._counter_lock:
                self._spool_rows = 0
            return True
        futures = []
        for r in rows:
            try:
                futures.append((r, self._producer.send(r.topic, r.value, key=r.key)))
            except Exception:
                break
        done: list[int] = []
        for r, f in futures:
            try:
                f.get(timeout=30)
                assert r.seq is not None
                done.append(r.seq)
            except Exception:
                break
        self.spool.remove(done)
        self._count(sent=len(done), redelivered=len(done))
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
        next_try = next_refresh = 0.0
        drainer = False
        while not (self._closing.is_set() and self._queue.empty()):
            now = time.monotonic()
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
