"""Keeps a serving replica on its classifiers' champions.

``model-events`` make a promotion or rollback reach every replica within seconds; each replica
reads them in its own consumer group (every replica must see every event). The handler only
re-resolves the registry alias, so replayed or duplicated events are harmless, and a slow poll of
the alias covers a replica that missed events while the broker was away.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import uuid

from classifier.engine import ServingEngine
from infra.events import TOPIC_MODEL_EVENTS, Event, ModelEvent
from infra.settings import Settings

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(self, settings: Settings, engine: ServingEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stop_event = threading.Event()
        self.group_id = f"sift-serving-{uuid.uuid4().hex[:12]}"
        self._threads = [
            threading.Thread(target=self._consume, name="model-events", daemon=True),
            threading.Thread(target=self._poll, name="model-poll", daemon=True),
        ]

    def start(self) -> ModelWatcher:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_event.set()
        for t in self._threads:
            t.join(timeout=5)

    def handle(self, topic: str, event: Event) -> None:
        from infra.bus import TransientError

        if not isinstance(event, ModelEvent):
            return
        try:
            version = self.engine.refresh(event.classifier)
        except Exception as exc:  # registry or store unavailable: retry this event
            raise TransientError(f"cannot load champion of {event.classifier}: {exc}") from exc
        log.info("model-event %s %s v%s: serving v%s", event.action, event.classifier, event.version, version)

    def _consume(self) -> None:
        from infra.bus import Bus

        bus = Bus(self.settings, client_id="sift-serving")
        while not self.stop_event.is_set():
            consumer = producer = None
            try:
                consumer = bus.consumer(self.group_id, [TOPIC_MODEL_EVENTS])
                producer = bus.producer()
                bus.run_consumer(consumer, self.handle, stop=self.stop_event, dead_letter_producer=producer)
            except Exception:
                log.warning("model-event consumer failed; retrying", exc_info=True)
                self.stop_event.wait(2.0)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        with contextlib.suppress(Exception):  # closing a broken client
                            client.close()

    def _poll(self) -> None:
        while not self.stop_event.wait(self.settings.model_poll_seconds):
            for name in list(self.engine.slots):
                try:
                    self.engine.refresh(name)
                except Exception:
                    log.warning("polling the champion of %s failed", name, exc_info=True)
