"""Low-confidence routing: which classify results become review requests.

Pure and cheap on purpose: it runs inside every classify call, so it must not do I/O. Publishing
the returned event is the caller's job: classify uses the fire-and-forget ``EventPublisher.publish``
(never blocks on the broker; spooled if the broker is down; lost only if the process is SIGKILLed
before the sender thread hands it on), unlike explicit feedback, which is durable before its 2xx.
"""

from __future__ import annotations

from infra.events import ReviewRequest, stable_id
from infra.tenants import ClassifierConfig


def review_request_for(
    cfg: ClassifierConfig,
    text: str,
    label: str,
    confidence: float,
    scores: dict[str, float],
    model_version: str,
    prediction_id: str,
) -> ReviewRequest | None:
    """A ``low_confidence`` review request when ``confidence < cfg.threshold``, else None.

    The event id is derived from the prediction id, so a retried publish (spool redelivery, a
    replayed request with the same prediction) is deduped by the review worker.
    """
    if confidence >= cfg.threshold:
        return None
    return ReviewRequest(
        event_id=stable_id("low_confidence", cfg.name, prediction_id),
        classifier=cfg.name,
        text=text,
        predicted_label=label,
        confidence=confidence,
        scores=dict(scores),
        model_version=model_version,
        source="low_confidence",
        prediction_id=prediction_id,
    )
