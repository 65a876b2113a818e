"""HTTP surface of the review stage: Label Studio's webhook and the review status endpoint.

The webhook is authenticated by a shared secret in a header (constant-time compare) and
answers at once; the work runs after the response, because Label Studio waits for the webhook
inside the reviewer's request with a 1 s timeout. Whatever fails there is picked up by the
reconciliation pass. Payloads carry Label Studio's project token: they are never logged.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import Any

from fastapi import APIRouter, BackgroundTasks, Depends, Header, HTTPException, Path, Request
from pydantic import BaseModel

from infra.events import TOPIC_REVIEWED_LABELS, ReviewedLabel
from infra.http import Services, check_admin, get_services, require_classifier, resolve_tenant
from infra.tenants import NotFound
from review.collector import Collector
from review.labelstudio import WEBHOOK_ACTIONS, WEBHOOK_PATH, WEBHOOK_SECRET_HEADER
from review.status import ReviewStatus, review_status

log = logging.getLogger(__name__)

router = APIRouter(tags=["review"])


class WebhookAck(BaseModel):
    accepted: bool
    action: str | None = None


def collector_for(services: Services) -> Collector:
    """One Collector per API process, publishing through the app's non-blocking EventPublisher."""
    collector = services.extras.get("review_collector")
    if collector is None:
        publisher = services.extras.get("publisher")
        if publisher is None:
            from infra.publisher import EventPublisher

            publisher = services.extras.setdefault("publisher", EventPublisher(services.settings))

        def publish(event: ReviewedLabel) -> None:
            publisher.publish(TOPIC_REVIEWED_LABELS, event)

        collector = Collector(services.settings, services.store, services.tenants, publish)
        services.extras["review_collector"] = collector
    return collector


def _check_secret(services: Services, given: str | None) -> None:
    if not given:
        raise HTTPException(401, f"missing webhook secret: send it in the {WEBHOOK_SECRET_HEADER} header")
    if not hmac.compare_digest(given.encode(), services.settings.webhook_secret.encode()):
        raise HTTPException(403, "invalid webhook secret")


def _process(collector: Collector, payload: dict[str, Any]) -> None:
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
    _check_secret(services, x_sift_webhook_secret)
    try:
        payload = json.loads(await request.body())
    except ValueError as exc:
        raise HTTPException(400, "malformed JSON body") from exc
    if not isinstance(payload, dict):
        raise HTTPException(400, "expected a JSON object")
    action = payload.get("action")
    if action not in WEBHOOK_ACTIONS:
        return WebhookAck(accepted=False, action=action if isinstance(action, str) else None)
    background.add_task(_process, collector_for(services), payload)
    return WebhookAck(accepted=True, action=action)


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
