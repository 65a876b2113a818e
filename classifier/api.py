"""``POST /v1/classifiers/{name}/classify``: label + confidence per text, low-confidence routing."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, HTTPException
from pydantic import BaseModel, ConfigDict, Field, model_validator

from classifier import metrics
from classifier.engine import ModelUnavailable, Scored
from classifier.routing import review_request_for
from infra.events import TOPIC_REVIEW_REQUESTS
from infra.guards import schema_extra, unicode_problem
from infra.http import KeyFirstRoute, Services, errors, get_services, tenant_for_key
from infra.predictions import PredictionRecord
from infra.tenants import ClassifierConfig

router = APIRouter(tags=["classify"], route_class=KeyFirstRoute)

# documented in the schema, enforced by validate_texts (whose messages name the text: texts[3])
Text = Annotated[str, Field(json_schema_extra={"minLength": 1, "pattern": r"\S"})]


class ClassifyRequest(BaseModel):
    """Exactly one of ``text`` or ``texts``."""
    # absent is None (an unvalidated default), an explicit null is refused, as the schema says

    model_config = ConfigDict(json_schema_extra=schema_extra(oneOf=[{"required": ["text"]}, {"required": ["texts"]}]))

    text: Text = Field(default=None, description="one non-blank text to classify")
    texts: list[Text] = Field(default=None, json_schema_extra={"minItems": 1},
                                                     description="several non-blank texts, classified together")

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.text is None) == (self.texts is None):
            raise ValueError("send exactly one of 'text' (a string) or 'texts' (a list of strings)")
        return self

    def all_texts(self) -> list[str]:
        return [self.text] if self.text is not None else list(self.texts or [])


class Prediction(BaseModel):
    label: str
    confidence: float
    scores: dict[str, float]
    model_version: str
    prediction_id: str
    review_requested: bool = Field(
        description="confidence was below the classifier's threshold (fixed, or derived from its review budget)")


class ClassifyResponse(BaseModel):
    classifier: str
    results: list[Prediction]


def validate_texts(texts: list[str], max_chars: int, max_batch: int, *, single: bool = False) -> None:
    """Before any model work, so one bad text is a clear 4xx naming it, never a failed batch."""
    if not texts:
        raise HTTPException(422, "'texts' must hold at least one text")
    if len(texts) > max_batch:
        raise HTTPException(413, f"{len(texts)} texts in one request; the limit is {max_batch} (SIFT_MAX_BATCH_TEXTS)")
    for i, text in enumerate(texts):
        where = "text" if single else f"texts[{i}]"
        if not text.strip():
            raise HTTPException(422, f"{where} is empty")
        if len(text) > max_chars:
            raise HTTPException(413, f"{where} has {len(text)} characters; the limit is {max_chars} "
                                     "(SIFT_MAX_TEXT_CHARS)")
        if problem := unicode_problem(where, text):
            raise HTTPException(422, problem)


@router.post(
    "/v1/classifiers/{name}/classify",
    response_model=ClassifyResponse,
    responses=errors(400, 401, 403, 404, 413, 422, 429, 503, e413="request body or a text too long, or too many "
                     "texts", e422="empty text, invalid Unicode or wrong types; detail names the field",
                     e503="no model loaded for this classifier; see Retry-After"),
)
async def classify(
    body: ClassifyRequest,
    cfg: ClassifierConfig = Depends(tenant_for_key),
    services: Services = Depends(get_services),
) -> ClassifyResponse:
    started = time.perf_counter()
    status = "error"
    try:
        texts = body.all_texts()
        validate_texts(texts, services.settings.max_text_chars, services.settings.max_batch_texts,
                       single=body.text is not None)
        engine = services.engine
        if engine is None:
            status = "503"
            raise HTTPException(503, "this process does not classify (no serving engine)")
        try:
            scored = await engine.classify(cfg.name, texts)
        except ModelUnavailable as exc:
            status = "503"
            raise HTTPException(503, str(exc), headers={"Retry-After": "5"}) from exc
        results = [_publish(services, cfg, text, s) for text, s in zip(texts, scored, strict=True)]
        status = "200"
        metrics.TEXTS.labels(cfg.name).inc(len(texts))
        return ClassifyResponse(classifier=cfg.name, results=results)
    except HTTPException as exc:
        status = str(exc.status_code)
        raise
    finally:
        metrics.REQUESTS.labels(cfg.name, status).inc()
        metrics.LATENCY.labels(cfg.name).observe(time.perf_counter() - started)


def _publish(services: Services, cfg: ClassifierConfig, text: str, s: Scored) -> Prediction:
    """Record the prediction and route a doubtful one to review; neither waits for I/O."""
    predictions = services.predictions
    record = PredictionRecord(classifier=cfg.name, text=text, label=s.label, confidence=s.confidence,
                              scores=s.scores, model_version=s.model_version)
    prediction_id = predictions.record(record) if predictions is not None else uuid.uuid4().hex
    threshold = None
    if services.review_router is not None:
        services.review_router.observe(cfg.name, s.confidence)
        threshold = services.review_router.threshold(cfg)
    request = review_request_for(cfg, text, s.label, s.confidence, s.scores, s.model_version, prediction_id,
                                 threshold)
    publisher = services.publisher
    if request is not None:
        metrics.LOW_CONFIDENCE.labels(cfg.name).inc()
        if publisher is not None:
            # fire-and-forget on purpose (no broker round trip in classify's latency): survives a broker
            # outage via the spool, but not a SIGKILL of this process within ~ms of the response.
            # Explicit feedback uses publish_durable instead (feedback/api.py).
            publisher.publish(TOPIC_REVIEW_REQUESTS, request)
    return Prediction(
        label=s.label, confidence=s.confidence, scores=s.scores, model_version=s.model_version,
        prediction_id=prediction_id, review_requested=request is not None,
    )
