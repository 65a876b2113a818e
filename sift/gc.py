"""Retention and watchdog wiring: ops runs the passes; the review stage deletes its own Label Studio tasks
and the retrain stage says which of its jobs are running.

Ops never imports a stage, so the task pruner is built here, in the composition root.
"""

from __future__ import annotations

import threading
from datetime import datetime

from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from ops.retention import Retention, TaskPruner, run_gc_worker
from ops.watchdog import RunningJob, RunningJobs


def task_pruner(settings: Settings, store: ObjectStore) -> TaskPruner:
    from review.retention import prune_finished_tasks

    def prune(cfg: ClassifierConfig, now: datetime, dry_run: bool) -> list[int]:
        return prune_finished_tasks(settings, store, cfg, now, dry_run=dry_run)

    return prune


def running_jobs(store: ObjectStore) -> RunningJobs:
    """The retrain stage's running job records, for the watchdog's stuck-job alert."""
    from retrain.job import list_jobs

    def running(classifier: str) -> list[RunningJob]:
        return [RunningJob(job_id=j.job_id, started_at=j.started_at)
                for j in list_jobs(store, classifier, limit=5) if j.status == "running"]

    return running


def retention(settings: Settings) -> Retention:
    store = ObjectStore(settings)
    store.ensure_bucket()
    return Retention(settings, store, task_pruner=task_pruner(settings, store))


def run_worker(settings: Settings, stop: threading.Event) -> None:
    """``sift worker gc``: the scheduled retention and drift pass."""
    store = ObjectStore(settings)
    run_gc_worker(settings, stop, task_pruner=task_pruner(settings, store), running_jobs=running_jobs(store))
