"""Review status of one classifier: what waits, what was reviewed, how often reviewers agreed.

Read from the same places the pipeline writes (Label Studio for open tasks, the object store for
the backlog and the reviewed dataset), so it is true on any replica and after any restart.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore
from infra.reviewed import load_reviewed
from infra.routing_stats import read_snapshots
from infra.settings import Settings
from infra.tenants import NotFound, TenantStore
from review.labelstudio import LabelStudioUnavailable, ReviewProjects
from review.queue import ReviewQueue


class ReviewStatus(BaseModel):
    classifier: str
    label_studio_project_id: int | None
    label_studio_reachable: bool
    pending_tasks: int | None = Field(description="open tasks in Label Studio (None when unreachable)")
    backlog: int = Field(description="requests waiting for a place in the review window")
    review_window: int
    reviewed: int = Field(description="texts with a reviewed label (latest review per text)")
    skipped: int = Field(description="texts only ever skipped")
    reviewed_per_label: dict[str, int]
    agreement: float | None = Field(description="share of reviews that kept the model's label")
    oldest_pending_age_s: float | None
    threshold: float | None = Field(default=None, description="the fixed routing threshold; None: budget-derived")
    review_budget_per_day: int | None = None
    traffic_per_day: float | None = Field(
        default=None, description="classify texts per day over the replicas' rolling windows (None: no recent traffic)")
    projected_reviews_per_day: float | None = Field(
        default=None, description="low-confidence review requests per day at the thresholds in force now")
    thresholds_in_force: list[float | None] = Field(
        default_factory=list, description="per serving replica (None: everything goes to review)")


def _age_from_marker(key: str, now: datetime) -> float | None:
    try:
        ms = int(key.split("-")[2])
    except (IndexError, ValueError):
        return None
    return max(0.0, now.timestamp() - ms / 1000)


def review_status(settings: Settings, classifier: str, *, store: ObjectStore | None = None,
                  projects: ReviewProjects | None = None) -> ReviewStatus:
    store = store or ObjectStore(settings)
    tenants = TenantStore(store)
    cfg = tenants.get(classifier)
    if cfg is None:
        raise NotFound(f"unknown classifier {classifier!r}")
    projects = projects or ReviewProjects.from_settings(settings)
    now = datetime.now(UTC)
    queue = ReviewQueue(settings, store, tenants, projects)
    backlog_keys = queue.backlog_keys(classifier)
    ages = [a for a in (_age_from_marker(k, now) for k in backlog_keys) if a is not None]

    pending: int | None = None
    reachable = True
    if cfg.label_studio_project_id is not None:
        try:
            pending = projects.count_open(cfg.label_studio_project_id)
            oldest = projects.open_tasks(cfg.label_studio_project_id, limit=1)
            if oldest and (requested := (oldest[0].get("data") or {}).get("requested_at")):
                ages.append(max(0.0, (now - datetime.fromisoformat(requested)).total_seconds()))
        except LabelStudioUnavailable:
            reachable = False
    else:
        pending = 0

    routing = read_snapshots(store, classifier, now=now)
    records = load_reviewed(store, classifier, include_skipped=True)
    labelled = [r for r in records if not r.skipped]
    per_label = Counter(r.label for r in labelled if r.label is not None)
    judged = [r for r in labelled if r.predicted_label is not None]
    agreement = (sum(r.label == r.predicted_label for r in judged) / len(judged)) if judged else None
    return ReviewStatus(
        classifier=classifier,
        label_studio_project_id=cfg.label_studio_project_id,
        label_studio_reachable=reachable,
        pending_tasks=pending,
        backlog=len(backlog_keys),
        review_window=cfg.review_window,
        reviewed=len(labelled),
        skipped=len(records) - len(labelled),
        reviewed_per_label=dict(sorted(per_label.items())),
        agreement=None if agreement is None else round(agreement, 4),
        oldest_pending_age_s=round(max(ages), 1) if ages else None,
        threshold=cfg.threshold,
        review_budget_per_day=cfg.review_budget_per_day,
        traffic_per_day=round(sum(r.texts_per_day for r in routing), 1) if routing else None,
        projected_reviews_per_day=round(sum(r.routed_per_day for r in routing), 1) if routing else None,
        thresholds_in_force=[r.threshold for r in sorted(routing, key=lambda r: r.replica)],
    )
