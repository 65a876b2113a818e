"""The event contracts on Kafka: one pydantic model per topic, each carrying ``schema_version``."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1

TOPIC_REVIEW_REQUESTS = "review-requests"
TOPIC_REVIEWED_LABELS = "reviewed-labels"
TOPIC_MODEL_EVENTS = "model-events"
TOPIC_DEAD_LETTER = "dead-letter"
TOPIC_TENANT_EVENTS = "tenant-events"
ALL_TOPICS = (TOPIC_REVIEW_REQUESTS, TOPIC_REVIEWED_LABELS, TOPIC_MODEL_EVENTS, TOPIC_DEAD_LETTER,
              TOPIC_TENANT_EVENTS)

ReviewSource = Literal["low_confidence", "audit_sample", "user_feedback", "batch_feedback"]


def _now() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return uuid.uuid4().hex


def stable_id(*parts: str) -> str:
    """Deterministic event id, so a retried producer emits the same id and consumers dedupe."""
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]


class Event(BaseModel):
    schema_version: int = SCHEMA_VERSION
    classifier: str

    def key(self) -> bytes:
        return self.classifier.encode()

    def to_bytes(self) -> bytes:
        return self.model_dump_json().encode()


class ReviewRequest(Event):
    event_id: str = Field(default_factory=new_id)
    classifier: str
    text: str
    predicted_label: str | None = None
    confidence: float | None = None
    scores: dict[str, float] = Field(default_factory=dict)
    model_version: str | None = None
    source: ReviewSource
    verdict: Literal["like", "dislike"] | None = None
    suggested_label: str | None = None
    comment: str | None = None
    prediction_id: str | None = None
    audit_rank: float | None = Field(
        default=None, ge=0, le=1, description="audit samples only: a uniform draw that orders them in the review "
        "window instead of their margin, so the sample reviewers answer stays unbiased")
    created_at: datetime = Field(default_factory=_now)


class ReviewedLabel(Event):
    event_id: str = Field(default_factory=new_id)
    classifier: str
    text: str
    label: str | None = Field(description="None when the reviewer skipped the task")
    skipped: bool = False
    reviewer: str | None = None
    review_task_id: int | None = None
    source: ReviewSource | None = None
    predicted_label: str | None = None
    prediction_id: str | None = None
    model_version: str | None = None
    reviewed_at: datetime = Field(default_factory=_now)


class ModelEvent(Event):
    event_id: str = Field(default_factory=new_id)
    classifier: str
    version: str
    action: Literal["promoted", "rolled_back"]
    metrics: dict[str, float] = Field(default_factory=dict)
    registry_uri: str
    created_at: datetime = Field(default_factory=_now)


class DeadLetter(Event):
    event_id: str = Field(default_factory=new_id)
    classifier: str = "unknown"
    original_topic: str
    payload: str
    error: str
    first_seen: datetime = Field(default_factory=_now)


class TenantChanged(Event):
    """A classifier's config or keys changed: every API replica drops its cached copy at once."""

    event_id: str = Field(default_factory=new_id)
    classifier: str
    change: Literal["created", "updated", "key_issued", "key_revoked", "deleted"]
    created_at: datetime = Field(default_factory=_now)


EVENT_TYPES: dict[str, type[Event]] = {
    TOPIC_REVIEW_REQUESTS: ReviewRequest,
    TOPIC_REVIEWED_LABELS: ReviewedLabel,
    TOPIC_MODEL_EVENTS: ModelEvent,
    TOPIC_DEAD_LETTER: DeadLetter,
    TOPIC_TENANT_EVENTS: TenantChanged,
}


def parse_event(topic: str, payload: bytes | str | dict[str, Any]) -> Event:
    """Parse by the short topic name (without prefix); raises pydantic.ValidationError on bad data."""
    model = EVENT_TYPES[topic]
    if isinstance(payload, dict):
        return model.model_validate(payload)
    return model.model_validate_json(payload)
