"""Best-effort alert webhooks shared by stages that raise operator alerts (drift, ...).

Short timeout and one retry: an alert must never fail or hold the pass that raised it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

log = logging.getLogger("sift.alerts")


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
