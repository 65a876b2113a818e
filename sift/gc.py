"""Retention wiring: ops runs the pass, the review stage deletes its own Label Studio tasks.

Ops never imports a stage, so the task pruner is built here, in the composition root.
"""

from __future__ import annotations

import threading
from datetime import datetime

from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from ops.retention import Retention, TaskPruner, run_gc_worker


def task_pruner(settings: Settings, store: ObjectStore) -> TaskPruner:
    from review.retention import prune_finished_tasks

    def prune(cfg: ClassifierConfig, now: datetime, dry_run: bool) -> list[int]:
        return prune_finished_tasks(settings, store, cfg, now, dry_run=dry_run)

    return prune


def retention(settings: Settings) -> Retention:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return Retention(settings, store, task_pruner=task_pruner(settings, store))


def run_worker(settings: Settings, stop: threading.Event) -> None:
    """``sift worker gc``: the scheduled retention and drift pass."""
    store = ObjectStore(settings)
    run_gc_worker(settings, stop, task_pruner=task_pruner(settings, store))
