"""Keeps a serving replica on its classifiers' champions.

``model-events`` make a promotion or rollback reach every replica within seconds: each replica
reads every partition itself (assign + seek to the end, no consumer group: every replica must see
every event, and no group is left behind per start). Nothing is replayed: a replica loads the
registry's champions when it starts. The handler only re-resolves the registry alias, so duplicated
events are harmless, and a slow poll of the alias covers a replica that missed events.
"""

from __future__ import annotations

import logging
import threading

from classifier.engine import ServingEngine
from infra.events import TOPIC_MODEL_EVENTS, Event, ModelEvent
from infra.settings import Settings

log = logging.getLogger(__name__)


class ModelWatcher:
    def __init__(self, settings: Settings, engine: ServingEngine) -> None:
        self.settings = settings
        self.engine = engine
        self.stop_event = threading.Event()
        self.following = threading.Event()  # set once the event reader has its positions
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
            version = self.engine.refresh(event.classifier, load_cold=False)
        except Exception as exc:  # registry or store unavailable: retry this event
            raise TransientError(f"cannot load champion of {event.classifier}: {exc}") from exc
        log.info("model-event %s %s v%s: serving v%s", event.action, event.classifier, event.version, version)

    def _consume(self) -> None:
        from infra.bus import Bus, tail

        tail(Bus(self.settings, client_id="sift-serving"), [TOPIC_MODEL_EVENTS], self.handle,
             stop=self.stop_event, on_assigned=self.following.set)

    def _poll(self) -> None:
        while not self.stop_event.wait(self.settings.model_poll_seconds):
            for name in list(self.engine.slots):
                try:
                    self.engine.refresh(name, load_cold=False)
                except Exception:
                    log.warning("polling the champion of %s failed", name, exc_info=True)
