"""Retrain metrics, and the alert for a failed job (counted here, sent by ``infra.alerts``).

The metrics live in the process that ran the job (the worker or the API process).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Gauge, Histogram

from infra.alerts import Alert, send_alert

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
          operator_url: str | None = None, details: dict[str, Any] | None = None) -> bool:
    """Count and raise a failed-retrain alert; returns whether every configured webhook accepted it."""
    FAILURES.labels(classifier, stage).inc()
    return send_alert(Alert(kind="retrain_failed", classifier=classifier, source="sift-retrain",
                            message=f"failed at {stage}: {message}", details={"stage": stage, **(details or {})}),
                      classifier_url=webhook_url, operator_url=operator_url)
