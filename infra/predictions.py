"""Prediction records, so feedback can refer to a prediction by id on any replica.

Written behind the request (a bounded queue drained by a thread), read by id from the object
store. A record that could not be written only means feedback must send text and label itself.
"""

from __future__ import annotations

import logging
import queue
import threading
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore

log = logging.getLogger(__name__)


class PredictionRecord(BaseModel):
    prediction_id: str
    classifier: str
    text: str
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def _key(classifier: str, prediction_id: str) -> str:
    return f"predictions/{classifier}/{prediction_id[:2]}/{prediction_id}.json"


class PredictionStore:
    def __init__(self, store: ObjectStore, max_pending: int = 50_000, writers: int = 2) -> None:
        self.store = store
        self._queue: queue.Queue[PredictionRecord | None] = queue.Queue(max_pending)
        self.dropped = 0
        self._threads = [
            threading.Thread(target=self._drain, name=f"prediction-writer-{i}", daemon=True)
            for i in range(writers)
        ]
        for t in self._threads:
            t.start()

    def record(self, rec: PredictionRecord) -> None:
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.dropped += 1

    def _drain(self) -> None:
        while True:
            rec = self._queue.get()
            try:
                if rec is None:
                    return
                self.store.put_json(_key(rec.classifier, rec.prediction_id), rec.model_dump(mode="json"))
            except Exception:  # the store is down: the record is best-effort
                self.dropped += 1
                log.warning("could not store prediction %s", rec and rec.prediction_id, exc_info=True)
            finally:
                self._queue.task_done()

    def flush(self, timeout: float = 10.0) -> None:
        """Wait until queued records are written (tests, shutdown)."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        done.wait(timeout)

    def get(self, classifier: str, prediction_id: str) -> PredictionRecord | None:
        if not prediction_id or "/" in prediction_id or len(prediction_id) > 64:
            return None
        data = self.store.get_json(_key(classifier, prediction_id))
        return None if data is None else PredictionRecord.model_validate(data)

    def close(self) -> None:
        self.flush()
        for _ in self._threads:
            self._queue.put(None)
