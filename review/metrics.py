"""Review-stage metrics, served on the review and reconcile workers' (and the API's) /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

BACKLOG = Gauge("sift_review_backlog", "review requests waiting for a place in the window", ["classifier"])
OPEN_TASKS = Gauge("sift_review_open_tasks", "open tasks in the classifier's Label Studio project (at each refill)",
                   ["classifier"])
WEBHOOKS = Counter("sift_review_webhooks_total", "Label Studio webhooks received, by outcome", ["outcome"])
RECONCILED = Counter("sift_review_reconciled_total", "reviews the reconciliation pass recovered (webhook missed)",
                     ["classifier"])
DISPLACED = Counter("sift_review_displaced_total", "open tasks returned to the backlog by higher-priority requests",
                    ["classifier"])
NEAR_DUPLICATES = Counter("sift_review_near_duplicates_held_total",
                          "backlog items kept out of the window (per refill) because they nearly repeat an open task",
                          ["classifier"])
