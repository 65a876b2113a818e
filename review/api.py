"""HTTP surface of the review stage: Label Studio's webhook and the review status endpoint.

The webhook is authenticated by a secret in a header (constant-time compare): the classifier's
own (``ClassifierConfig.webhook_secret``, rotatable) when it has one, else ``SIFT_WEBHOOK_SECRET``.
The classifier is read from the payload first, so a secret opens one classifier's webhook only.
It answers at once; the work runs after the response, because Label Studio waits for the webhook
inside the reviewer's request with a 1 s timeout. The reviewed label is published durably (acked
or spooled) before the collected marker is written; whatever fails there is picked up by the
reconciliation pass. Payloads carry Label Studio's project token: they are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Path, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from infra.events import TOPIC_REVIEWED_LABELS, ReviewedLabel
from infra.http import HandlesWebhooks, Services, check_admin, get_services, require_classifier, resolve_tenant
from infra.publisher import EventPublisher
from infra.tenants import NAME_RE, ClassifierConfig, NotFound
from review.collector import Collector
from review.labelstudio import (
    WEBHOOK_ACTIONS,
    WEBHOOK_PATH,
    WEBHOOK_SECRET_HEADER,
    rotate_webhook_secret,
    webhook_secret_of,
)
from review.status import ReviewStatus, review_status

log = logging.getLogger(__name__)

router = APIRouter(tags=["review"])

PUBLISH_TIMEOUT_S = 5.0  # broker ack wait for one reviewed label before it is spooled instead


class WebhookAck(BaseModel):
    accepted: bool
    action: str | None = None


def build_collector(services: Services, publisher: EventPublisher) -> Collector:
    """The webhook's Collector (one per API process), publishing durably through the app's EventPublisher.

    ``publish_durable`` raises ``NotDurable`` when neither the broker nor the spool took the
    event: the collected marker is then not written, and reconciliation repeats the review.
    """

    def publish(event: ReviewedLabel) -> None:
        publisher.publish_durable(TOPIC_REVIEWED_LABELS, event, timeout=PUBLISH_TIMEOUT_S)

    return Collector(services.settings, services.store, services.tenants, publish)


def _classifier_named(services: Services, payload: dict[str, Any]) -> ClassifierConfig | None:
    task = payload.get("task")
    data = task.get("data") if isinstance(task, dict) else None
    name = data.get("classifier") if isinstance(data, dict) else None
    return services.tenant_cache.get(name) if isinstance(name, str) and NAME_RE.match(name) else None


def _check_secret(services: Services, given: str, cfg: ClassifierConfig | None) -> None:
    expected = webhook_secret_of(services.settings, cfg)
    if not hmac.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(403, "invalid webhook secret")


def _process(collector: HandlesWebhooks, payload: dict[str, Any]) -> None:
    task_id = (payload.get("task") or {}).get("id")
    try:
        collector.handle_webhook(payload)
    except Exception as exc:  # reconciliation recovers it; never log the payload (it holds a token)
        log.warning("webhook for task %s not processed (%s: %s); reconciliation will retry",
                    task_id, type(exc).__name__, exc)


@router.post(WEBHOOK_PATH, response_model=WebhookAck, summary="Label Studio annotation webhook")
async def webhook(
    request: Request,
    background: BackgroundTasks,
    x_sift_webhook_secret: str | None = Header(default=None, alias=WEBHOOK_SECRET_HEADER),
    services: Services = Depends(get_services),
) -> WebhookAck:
    if not x_sift_webhook_secret:
        raise HTTPException(401, f"missing webhook secret: send it in the {WEBHOOK_SECRET_HEADER} header")
    try:
        payload = json.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(400, "malformed JSON body") from exc
    if not isinstance(payload, dict):
        raise HTTPException(400, "expected a JSON object")
    _check_secret(services, x_sift_webhook_secret, await run_in_threadpool(_classifier_named, services, payload))
    action = payload.get("action")
    if action not in WEBHOOK_ACTIONS:
        return WebhookAck(accepted=False, action=action if isinstance(action, str) else None)
    if services.review_collector is None:
        raise HTTPException(503, "this process does not take review webhooks")
    background.add_task(_process, services.review_collector, payload)
    return WebhookAck(accepted=True, action=action)


class SecretRotated(BaseModel):
    classifier: str
    label_studio_updated: bool


@router.post("/v1/admin/classifiers/{name}/webhook-secret", response_model=SecretRotated,
             summary="Rotate a classifier's Label Studio webhook secret")
def rotate_secret(name: str, x_admin_key: str | None = Header(default=None),
                  services: Services = Depends(get_services)) -> SecretRotated:
    """New secret saved, then Label Studio's webhook re-registered with it (the secret is never returned)."""
    check_admin(services, x_admin_key)
    try:
        updated = rotate_webhook_secret(services.settings, services.tenants, name)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
    services.tenant_cache.invalidate(name)
    return SecretRotated(classifier=name, label_studio_updated=updated)


def classifier_reader(
    name: str = Path(..., description="classifier name"),
    x_admin_key: str | None = Header(default=None),
    x_api_key: str | None = Header(default=None),
    services: Services = Depends(get_services),
) -> str:
    """The admin key, or the classifier's own API key."""
    if x_admin_key is not None:
        check_admin(services, x_admin_key)
        return require_classifier(services.tenant_cache, name).name
    return resolve_tenant(services.tenant_cache, name, x_api_key).name


@router.get("/v1/classifiers/{name}/review/status", response_model=ReviewStatus,
            summary="Review queue status of a classifier")
def status(name: str = Depends(classifier_reader), services: Services = Depends(get_services)) -> ReviewStatus:
    try:
        return review_status(services.settings, name, store=services.store)
    except NotFound as exc:
        raise HTTPException(404, str(exc)) from exc
