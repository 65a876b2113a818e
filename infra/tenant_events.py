"""Tenant changes reach every API replica at once: published on ``tenant-events``, followed by each replica.

A threshold change, a new or revoked key or a deleted classifier is stored first (the object store
is the truth), then announced. Every replica follows the topic without a consumer group (all
partitions, from the end) and drops its cached copy of that classifier on receipt, so the next
request reads the store. Publishing is best effort and off the request path: a lost event leaves
the cache TTL (``SIFT_CONFIG_CACHE_SECONDS``) as the bound.
"""

from __future__ import annotations

import logging
import queue
import threading

from infra.bus import Bus, tail
from infra.events import TOPIC_TENANT_EVENTS, Event, TenantChanged
from infra.settings import Settings
from infra.tenants import TenantCache

log = logging.getLogger(__name__)


class TenantNotifier:
    """``TenantStore.on_change``: queues the event; one background thread publishes (acks=all)."""

    def __init__(self, settings: Settings) -> None:
        self.bus = Bus(settings, client_id="sift-tenants")
        self._queue: queue.Queue[TenantChanged | None] = queue.Queue(maxsize=10_000)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def __call__(self, name: str, change: str) -> None:
        event = TenantChanged(classifier=name, change=change)  # type: ignore[arg-type]
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="tenant-events-out", daemon=True)
                self._thread.start()
        try:
            self._queue.put_nowait(event)
        except queue.Full:
            log.warning("tenant-event queue full; %s %s relies on the cache TTL", name, change)

    def _run(self) -> None:
        producer = None
        while (event := self._queue.get()) is not None:
            try:
                producer = producer or self.bus.producer()
                self.bus.send_sync(producer, TOPIC_TENANT_EVENTS, event, timeout_s=10)
            except Exception as exc:  # noqa: BLE001 - best effort: other replicas fall back to the TTL
                log.warning("could not publish tenant change %s %s: %s", event.classifier, event.change, exc)
        if producer is not None:
            producer.close(timeout=5)

    def close(self, timeout_s: float = 5.0) -> None:
        """Publish what is queued (a CLI exits right after its change), then stop."""
        with self._lock:
            thread, self._thread = self._thread, None
        if thread is not None:
            self._queue.put(None)
            thread.join(timeout=timeout_s)


class TenantListener:
    """Drops a replica's cached config and keys of each classifier named on ``tenant-events``."""

    def __init__(self, settings: Settings, cache: TenantCache) -> None:
        self.bus = Bus(settings, client_id="sift-tenant-listener")
        self.cache = cache
        self.stop_event = threading.Event()
        self.following = threading.Event()  # set once the reader has its positions
        self._thread = threading.Thread(target=self._run, name="tenant-events-in", daemon=True)

    def handle(self, topic: str, event: Event) -> None:
        if isinstance(event, TenantChanged):
            self.cache.invalidate(event.classifier)
            log.info("tenant %s %s: cache dropped", event.classifier, event.change)

    def _run(self) -> None:
        tail(self.bus, [TOPIC_TENANT_EVENTS], self.handle, stop=self.stop_event, on_assigned=self.following.set)

    def start(self) -> TenantListener:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        self._thread.join(timeout=5)
