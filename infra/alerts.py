"""Operator alerts: one body, one sender, for every stage that raises one.

An alert goes to the classifier's ``alert_webhook_url`` (its team) and to ``SIFT_ALERT_WEBHOOK_URL``
(the operator, who gets every alert, including the ones that name no classifier such as a spool
that is not draining). The body is JSON with a ``text`` line, so Slack-style incoming webhooks
accept it as it is. Best effort: short timeout, one retry, never raises — an alert must not fail or
hold the pass, job or request that raised it. Each kind is counted in ``sift_alerts_total``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Literal

from prometheus_client import Counter
from pydantic import BaseModel, Field

log = logging.getLogger("sift.alerts")

AlertKind = Literal["retrain_failed", "retrain_stuck", "dead_letters", "spool_age", "drift", "model_load_failed"]

SENT = Counter("sift_alerts_total", "alerts raised, by kind and whether every webhook accepted them",
               ["kind", "delivered"])


class Alert(BaseModel):
    kind: AlertKind
    message: str
    classifier: str | None = None
    source: str = Field(description="the process that raised it: sift-retrain, sift-ops, sift-api ...")
    details: dict[str, Any] = Field(default_factory=dict)
    at: float = Field(default_factory=time.time)

    def body(self) -> dict[str, Any]:
        about = f" {self.classifier}" if self.classifier else ""
        text = f"Sift {self.kind.replace('_', ' ')}{about}: {self.message}"[:3000]
        return {"text": text, **self.model_dump(mode="json")}


def post_alert(webhook_url: str, body: dict[str, Any], *, timeout_s: float = 5.0) -> bool:
    """POST ``body`` as JSON; True when the webhook answered 2xx."""
    import httpx

    for attempt in range(2):
        try:
            r = httpx.post(webhook_url, json=body, timeout=timeout_s)
            if r.status_code < 300:
                return True
            log.warning("alert webhook answered %s", r.status_code)
        except httpx.HTTPError as exc:
            log.warning("alert webhook failed (attempt %d): %s", attempt + 1, exc)
        if attempt == 0:
            time.sleep(0.5)
    return False


def send_alert(alert: Alert, *, classifier_url: str | None = None, operator_url: str | None = None) -> bool:
    """Log the alert and post it to each configured webhook; True when all of them accepted it."""
    log.error("alert %s%s: %s", alert.kind, f" for {alert.classifier}" if alert.classifier else "", alert.message)
    urls = list(dict.fromkeys(u for u in (classifier_url, operator_url) if u))
    delivered = all([post_alert(u, alert.body()) for u in urls])
    SENT.labels(alert.kind, str(delivered).lower()).inc()
    return delivered


def send_alert_later(alert: Alert, *, classifier_url: str | None = None,
                     operator_url: str | None = None) -> threading.Thread:
    """``send_alert`` on a thread of its own, for callers that must not wait on a webhook (request paths)."""
    thread = threading.Thread(target=send_alert, args=(alert,), daemon=True, name=f"alert-{alert.kind}",
                              kwargs={"classifier_url": classifier_url, "operator_url": operator_url})
    thread.start()
    return thread


class Episode:
    """Alert once when a condition starts, again only after it has cleared (a spool that stays old
    is one alert, not one per check)."""

    def __init__(self) -> None:
        self.active = False

    def update(self, condition: bool) -> bool:
        """True exactly when the condition has just started."""
        started = condition and not self.active
        self.active = condition
        return started
