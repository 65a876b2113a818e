"""Alerts for failed retrain jobs: a log line, a Prometheus counter and an optional webhook.

The webhook is best effort (short timeout, one retry): an alert must never fail the job's
bookkeeping or hold the worker. The metrics live in the process that ran the job (the worker or
the API process).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import Counter, Gauge, Histogram

log = logging.getLogger("sift.retrain.alerts")

JOBS = Counter("sift_retrain_jobs_total", "Retrain jobs by outcome", ["classifier", "outcome"])
FAILURES = Counter("sift_retrain_failures_total", "Retrain jobs that failed or were stopped by data checks",
                   ["classifier", "stage"])
DURATION = Histogram("sift_retrain_job_seconds", "Retrain job duration", ["classifier"],
                     buckets=(10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200))

PHASES = Histogram("sift_retrain_phase_seconds", "Retrain job phase duration (assemble, validate, train:<c>...)",
                   ["classifier", "phase"], buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1200, 3600))
RUNNING_SINCE = Gauge("sift_retrain_running_since_seconds",
                      "Unix time the classifier's running retrain job started (0: none running here)", ["classifier"])


def alert(classifier: str, stage: str, message: str, *, webhook_url: str | None = None,
          details: dict[str, Any] | None = None) -> bool:
    """Raise an alert; returns whether the webhook (when configured) accepted it."""
    FAILURES.labels(classifier, stage).inc()
    log.error("retrain alert for %s at %s: %s", classifier, stage, message)
    if not webhook_url:
        return True
    import httpx

    body = {"text": f"Sift retrain of {classifier} failed at {stage}: {message}"[:3000],  # Slack-style receivers
            "classifier": classifier, "stage": stage, "message": message, "details": details or {},
            "source": "sift-retrain", "at": time.time()}
    for attempt in range(2):
        try:
            r = httpx.post(webhook_url, json=body, timeout=5.0)
            if r.status_code < 300:
                return True
            log.warning("alert webhook answered %s", r.status_code)
        except httpx.HTTPError as exc:
            log.warning("alert webhook failed (attempt %d): %s", attempt + 1, exc)
        time.sleep(0.5)
    return False
