"""Deleting finished Label Studio tasks once their labels are collected (a retention pass of the review stage).

A task is deleted when every answer on it has its collected marker (``review/<c>/collected/``,
so the label is in ``datasets/<c>/reviewed/``) and it was last updated longer ago than the
classifier's ``retention.finished_tasks_days``. A task with an answer not yet collected is kept
for the reconciliation pass. The review queue treats a deleted task as finished, so the same text
asked for again opens a new task. ``sift gc`` (ops) runs this through the composition root: ops
never imports the review stage.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from review.collector import _collected_prefix, reviewed_event
from review.labelstudio import ReviewProjects

log = logging.getLogger(__name__)


def _updated_at(task: dict) -> datetime | None:
    value = task.get("updated_at")
    if isinstance(value, datetime):
        return value
    if isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return None


def prune_finished_tasks(settings: Settings, store: ObjectStore, cfg: ClassifierConfig, now: datetime,
                         *, dry_run: bool = False, projects: ReviewProjects | None = None) -> list[int]:
    """Ids of the finished, collected tasks older than the policy (deleted unless ``dry_run``)."""
    if cfg.label_studio_project_id is None:
        return []
    projects = projects or ReviewProjects.from_settings(settings)
    prefix = _collected_prefix(cfg.name)
    collected = {k[len(prefix):] for k in store.list_keys(prefix)}
    cutoff = now - timedelta(days=cfg.retention.finished_tasks_days)
    doomed = []
    for task in projects.finished_tasks(cfg.label_studio_project_id):
        updated = _updated_at(task)
        if updated is None or updated >= cutoff:
            continue
        events = [reviewed_event(cfg.name, a) for a in projects.annotations(task)]
        if events and all(e is not None and e.event_id in collected for e in events):
            doomed.append(int(task["id"]))
    if not dry_run:
        for task_id in doomed:
            projects._call(projects.client.tasks.delete, str(task_id))
        if doomed:
            log.info("retention: deleted %d finished Label Studio tasks of %s", len(doomed), cfg.name)
    return doomed
