"""Explicit feedback over HTTP: one like/dislike, or a batch file of texts to review.

Both end in ``review-requests`` events published through the app's ``EventPublisher``
(``services.publisher``) durably (single: ``submit_durable``, a group commit; batch:
``publish_durable``): a 2xx is answered only once every event is acked by the broker or committed
to the local SQLite spool, so accepted feedback survives a broker outage *and* a SIGKILL of this
process right after the response. When neither is possible the answer is 503 with the reason, and
nothing is reported accepted. (Classify's low-confidence routing stays fire-and-forget, for latency.)
Idempotency: an ``Idempotency-Key`` header fixes the event id(s), and consumers dedupe by it.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Header, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from feedback.uploads import (
    API_SUBFOLDER,
    UploadRejected,
    UploadReport,
    file_sha256,
    ingest_upload,
    prefix_for,
    safe_filename,
)
from infra.events import TOPIC_REVIEW_REQUESTS, ReviewRequest, new_id, stable_id
from infra.guards import schema_extra, unicode_problem
from infra.http import KeyFirstRoute, Services, errors, get_services, tenant_for_key
from infra.predictions import PredictionRecord
from infra.publisher import EventPublisher, NotDurable
from infra.tenants import ClassifierConfig

log = logging.getLogger(__name__)
router = APIRouter(tags=["feedback"], route_class=KeyFirstRoute)

ACK_TIMEOUT_S = 5.0  # a single feedback waits this long for the broker's ack before it is spooled instead
RETRY_AFTER = {"Retry-After": "5"}

IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200, description="same key → same event id (deduped downstream)"),
]


NonBlank = {"minLength": 1, "pattern": r"\S"}
PredictionId = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]


class FeedbackRequest(BaseModel):
    # the schema states the cross-field rules too (allOf), so what it calls valid is accepted; optional
    # fields are typed str with a None default (pydantic does not validate defaults): absent is None,
    # an explicit null is refused, as the schema says

    model_config = ConfigDict(json_schema_extra=schema_extra(allOf=[
        {"anyOf": [{"required": ["prediction_id"]}, {"required": ["text", "label"]}]},
        {"anyOf": [{"properties": {"verdict": {"const": "dislike"}}}, {"not": {"required": ["correct_label"]}}]},
    ]))

    prediction_id: PredictionId = Field(default=None, description="id returned by classify")
    text: str = Field(default=None, json_schema_extra=NonBlank,
                                             description="the classified text, when there is no prediction_id")
    label: str = Field(default=None, description="the label the text got, when there is no "
                                              "prediction_id; one of the classifier's labels")
    verdict: Literal["like", "dislike"]
    correct_label: str = Field(default=None, description="what the label should have been "
                                                      "(dislike only); one of the classifier's labels")
    comment: str = Field(default=None, max_length=2000)

    @model_validator(mode="after")
    def _reference(self) -> FeedbackRequest:
        for name in ("prediction_id", "text", "label", "correct_label", "comment"):
            if (value := getattr(self, name)) is not None and (problem := unicode_problem(name, value)):
                raise ValueError(problem)
        if self.prediction_id is None and (self.text is None or self.label is None):
            raise ValueError("send a prediction_id, or the text and the label it got")
        if self.verdict == "like" and self.correct_label is not None:
            raise ValueError("a 'like' confirms the predicted label; send verdict 'dislike' with correct_label")
        return self


class FeedbackAccepted(BaseModel):
    event_id: str
    classifier: str
    status: Literal["accepted"] = "accepted"


def _publisher(services: Services) -> EventPublisher:
    publisher = services.publisher
    if publisher is None:
        raise HTTPException(503, "feedback is not available: this process has no event publisher")
    return publisher


def _check_label(cfg: ClassifierConfig, label: str, field: str) -> None:
    if label not in cfg.labels:
        raise HTTPException(
            422, f"{field}: unknown label {label!r} for classifier {cfg.name!r} (labels: {', '.join(cfg.labels)})"
        )


def _lookup(services: Services, cfg: ClassifierConfig, prediction_id: str) -> PredictionRecord | None:
    store = services.predictions
    if store is None:
        return None
    try:
        return store.get(cfg.name, prediction_id)
    except Exception as exc:  # the object store is down: say so rather than "unknown"
        log.warning("prediction lookup failed", exc_info=True)
        raise HTTPException(503, "cannot look up predictions right now; retry, or send text and label") from exc


@router.post(
    "/v1/classifiers/{name}/feedback",
    status_code=202,
    response_model=FeedbackAccepted,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503, e404="unknown classifier or prediction",
                     e413="request body or text too long",
                     e422="wrong verdict, unknown label, missing reference, invalid Unicode; detail names the field",
                     e503="not accepted: neither the broker nor the local spool could take it; see Retry-After"),
)
async def post_feedback(
    body: FeedbackRequest,
    cfg: ClassifierConfig = Depends(tenant_for_key),
    services: Services = Depends(get_services),
    idempotency_key: IdempotencyKey = None,
) -> FeedbackAccepted:
    """Like or dislike one prediction; becomes a ``user_feedback`` review request.

    Async on purpose: the event joins the publisher's next group commit and the request awaits
    its future, so concurrent feedback shares one broker round trip and holds no worker thread.
    Only the prediction lookup (a blocking S3 read) runs in a thread.
    """
    publisher = _publisher(services)
    # what the body says is checked whether or not a prediction record is found: a 202 never
    # depends on which replica's lookup saw the record
    if body.text is not None:
        if not body.text.strip():
            raise HTTPException(422, "text is empty")
        limit = services.settings.max_text_chars
        if len(body.text) > limit:
            raise HTTPException(413, f"text has {len(body.text)} characters; the limit is {limit}")
    if body.label is not None:
        _check_label(cfg, body.label, "label")
    if body.correct_label is not None:
        _check_label(cfg, body.correct_label, "correct_label")
    record = await run_in_threadpool(_lookup, services, cfg, body.prediction_id) if body.prediction_id else None
    if body.prediction_id and record is None and (body.text is None or body.label is None):
        raise HTTPException(
            404,
            f"unknown prediction {body.prediction_id!r} for classifier {cfg.name!r} (a prediction is findable "
            "a moment after classify returns; or send the text and the label it got)",
        )
    if record is not None:
        text, label = record.text, record.label
        confidence, scores, model_version = record.confidence, record.scores, record.model_version
    else:
        assert body.text is not None and body.label is not None
        text, label, confidence, scores, model_version = body.text, body.label, None, {}, None
    event_id = stable_id("user_feedback", cfg.name, idempotency_key) if idempotency_key else new_id()
    event = ReviewRequest(
        event_id=event_id, classifier=cfg.name, text=text, predicted_label=label, confidence=confidence,
        scores=scores, model_version=model_version, source="user_feedback", verdict=body.verdict,
        suggested_label=body.correct_label, comment=body.comment, prediction_id=body.prediction_id,
    )
    try:
        await asyncio.wrap_future(publisher.submit_durable(TOPIC_REVIEW_REQUESTS, event, timeout=ACK_TIMEOUT_S))
    except NotDurable as exc:
        raise HTTPException(503, f"feedback not accepted, retry later: {exc}", headers=RETRY_AFTER) from exc
    return FeedbackAccepted(event_id=event_id, classifier=cfg.name)


@router.post(
    "/v1/classifiers/{name}/feedback/batch",
    status_code=202,
    response_model=UploadReport,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503, e400="malformed or empty file (the reason is in detail)",
                     e413="file larger than SIFT_MAX_UPLOAD_BYTES",
                     e503="not accepted: neither the broker nor the local spool could take the rows; retry the "
                          "same file (rows that got through have the same event ids and are deduped)"),
)
def post_feedback_batch(
    file: UploadFile = File(..., description="CSV, JSONL or {\"classifier\", \"sentences\"} JSON"),
    cfg: ClassifierConfig = Depends(tenant_for_key),
    services: Services = Depends(get_services),
    idempotency_key: IdempotencyKey = None,
) -> UploadReport:
    """Upload a file of texts to review; every good row becomes a ``batch_feedback`` review request.

    The multipart body is spooled to a temporary file by the server (bounded memory), copied raw to
    ``feedback-uploads/<classifier>/api/<upload_id>/<filename>`` with a report next to it, then
    validated and published in two streaming passes (``ingest_upload``, shared with the drop
    folder). Sync on purpose: FastAPI runs it in a worker thread, so the event loop keeps serving
    classify while a 100k-row file is processed.
    """
    publisher = _publisher(services)
    f = file.file
    digest, _size = file_sha256(f)
    basis = stable_id("batch_feedback", cfg.name, idempotency_key) if idempotency_key else digest[:32]
    source_key = f"{prefix_for(cfg.name)}{API_SUBFOLDER}/{basis}/{safe_filename(file.filename)}"
    try:
        return ingest_upload(f, filename=file.filename, cfg=cfg, publisher=publisher, store=services.store,
                             settings=services.settings, basis=basis, source_key=source_key, copy_raw=True)
    except UploadRejected as exc:
        raise HTTPException(exc.status_code, f"malformed file {file.filename!r}: {exc.report.error}"
                            if exc.status_code == 400 else str(exc.report.error)) from exc
    except NotDurable as exc:
        raise HTTPException(503, f"batch feedback {exc}", headers=RETRY_AFTER) from exc
