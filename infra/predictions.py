"""Prediction records, so feedback can name a prediction by id on any replica.

Records are written behind the request in *segments*: every half second (or every 512 records)
the replica writes one object holding the records since the last write. A prediction id is the
segment id plus the record's index in it, so a lookup knows which object to read without an
index — one PUT per segment instead of one per prediction keeps boto3 off the request path's CPU.
A record that could not be written only means feedback must send text and label itself.
"""

from __future__ import annotations

import logging
import re
import threading
import uuid
from collections import OrderedDict
from datetime import UTC, datetime

from prometheus_client import Counter
from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore

log = logging.getLogger(__name__)

DROPPED = Counter("sift_prediction_records_dropped_total",
                  "prediction records never stored: the object store was down past the memory bound "
                  "(feedback on them must send text and label)")
SEGMENT_CHARS = 24
ID_RE = re.compile(r"^[0-9a-f]{32}$")


class PredictionRecord(BaseModel):
    prediction_id: str = ""
    classifier: str
    text: str
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))


def segment_key(segment: str) -> str:
    return f"predictions/{segment[:2]}/{segment}.json"


def _new_segment() -> str:
    return uuid.uuid4().hex[:SEGMENT_CHARS]


class PredictionStore:
    def __init__(self, store: ObjectStore, *, flush_interval_s: float = 0.5, max_segment: int = 512,
                 max_unwritten_segments: int = 2_000, cached_segments: int = 64) -> None:
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.max_segment = max_segment
        self.max_unwritten = max_unwritten_segments
        self._lock = threading.Lock()
        self._segment = _new_segment()
        self._records: list[PredictionRecord] = []
        self._unwritten: OrderedDict[str, list[PredictionRecord]] = OrderedDict()
        self._cache: OrderedDict[str, list[dict]] = OrderedDict()
        self._cached_segments = cached_segments
        self._wake = threading.Event()
        self._idle = threading.Event()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="prediction-writer", daemon=True)
        self._thread.start()

    def record(self, rec: PredictionRecord) -> str:
        """Keep the record for the next segment write; returns its prediction id."""
        with self._lock:
            pid = f"{self._segment}{len(self._records):08x}"
            self._records.append(rec.model_copy(update={"prediction_id": pid}))
            if len(self._records) >= self.max_segment:
                self._rotate()
                self._wake.set()
        return pid

    def _rotate(self) -> None:
        if self._records:
            self._unwritten[self._segment] = self._records
            while len(self._unwritten) > self.max_unwritten:  # store down for long: bound memory
                _, lost = self._unwritten.popitem(last=False)
                DROPPED.inc(len(lost))
            self._segment, self._records = _new_segment(), []

    def _write_pending(self) -> None:
        with self._lock:
            self._rotate()
            pending = list(self._unwritten.items())
        for segment, records in pending:
            try:
                self.store.put_json(segment_key(segment), [r.model_dump(mode="json") for r in records])
            except Exception:  # the store is down: keep the segment and retry on the next tick
                log.warning("could not store prediction segment %s", segment, exc_info=True)
                return
            with self._lock:
                self._unwritten.pop(segment, None)

    def _run(self) -> None:
        while not self._closed.is_set():
            self._wake.wait(self.flush_interval_s)
            self._wake.clear()
            self._write_pending()
            with self._lock:
                if not self._unwritten and not self._records:
                    self._idle.set()

    def flush(self, timeout: float = 10.0) -> bool:
        """Write what is pending now (tests, shutdown); True when nothing is left unwritten."""
        self._idle.clear()
        self._wake.set()
        return self._idle.wait(timeout)

    def get(self, classifier: str, prediction_id: str) -> PredictionRecord | None:
        """The record, or None for an unknown id or another tenant's prediction."""
        if not ID_RE.match(prediction_id or ""):
            return None
        segment, index = prediction_id[:SEGMENT_CHARS], int(prediction_id[SEGMENT_CHARS:], 16)
        with self._lock:
            local = self._records if segment == self._segment else self._unwritten.get(segment)
            rec = local[index] if local is not None and index < len(local) else None
        if rec is None and local is None:
            rows = self._cache.get(segment)
            if rows is None:
                rows = self.store.get_json(segment_key(segment))
                if rows is None:
                    return None
                self._cache[segment] = rows
                while len(self._cache) > self._cached_segments:
                    self._cache.popitem(last=False)
            rec = PredictionRecord.model_validate(rows[index]) if index < len(rows) else None
        return rec if rec is not None and rec.classifier == classifier else None

    def close(self) -> None:
        self.flush()
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=5)
