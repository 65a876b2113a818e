"""Retention: delete what a classifier's ``RetentionPolicy`` no longer keeps (``sift gc``, ``sift worker gc``).

One pass, given ``now`` (so tests control the clock), per classifier:

- **prediction texts**: segments under ``predictions/`` hold records of every classifier a replica
  served, so a segment is deleted once it is older (object age) than the *shortest*
  ``predictions_days`` among all classifiers; feedback naming an expired prediction id must then
  send text and label itself, as when the record was never written;
- **raw uploads** under ``feedback-uploads/<c>/``: a file is deleted with its report once it is
  older than ``uploads_days`` and has a report (it was ingested); a file never ingested is kept;
- **model versions**: beyond the newest ``keep_versions``, versions are deleted from the registry
  unless the champion's lineage references them: the champion, ``previous-champion``, every
  version in the champion history (rollback targets) and the champion's ``parent_version`` chain;
- **model cache**: this machine's download cache keeps only the champion and previous champion.

- **finished Label Studio tasks**: deleting them is the review stage's job (``review/retention.py``);
  ops never imports a stage, so the composition root (``sift/gc.py``) hands a ``TaskPruner`` in.

Nothing in a pass depends on an earlier one having run: a failed pass is simply retried by the next.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore
from infra.registry import CHAMPION, PREVIOUS, Registry
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from ops.watchdog import RunningJobs, Watchdog

log = logging.getLogger(__name__)

PREDICTIONS_PREFIX = "predictions/"
UPLOADS_PREFIX = "feedback-uploads/"
REPORT_SUFFIX = ".report.json"  # feedback/uploads.py: a file's ingestion report sits at <key>.report.json


# (classifier config, now, dry_run) -> ids of the finished review tasks deleted (or that would be)
TaskPruner = Callable[[ClassifierConfig, datetime, bool], list[int]]


def champion_history_key(classifier: str) -> str:
    """Written by the retrain stage (retrain/paths.py); read here for the lineage that must survive."""
    return f"models/{classifier}/champion-history.json"


class ClassifierGc(BaseModel):
    classifier: str
    uploads_deleted: list[str] = Field(default_factory=list)
    tasks_deleted: list[int] = Field(default_factory=list, description="finished Label Studio task ids")
    versions_deleted: list[str] = Field(default_factory=list)
    versions_protected: list[str] = Field(default_factory=list, description="the champion's lineage")
    cache_pruned: list[str] = Field(default_factory=list)


class GcReport(BaseModel):
    now: datetime
    dry_run: bool
    predictions_days: float | None = Field(description="the policy applied to the shared segments")
    prediction_segments_deleted: int = 0
    classifiers: list[ClassifierGc] = Field(default_factory=list)


def _older(modified: datetime | None, now: datetime, days: float) -> bool:
    return modified is not None and modified < now - timedelta(days=days)


class Retention:
    def __init__(self, settings: Settings, store: ObjectStore, registry: Registry | None = None,
                 cache_dir: Path | None = None, task_pruner: TaskPruner | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tenants = TenantStore(store)
        self.registry = registry if registry is not None else Registry(settings)  # every pass reads it
        self.cache_dir = cache_dir or settings.model_cache_dir
        self.task_pruner = task_pruner

    def run(self, now: datetime | None = None, *, classifier: str | None = None, dry_run: bool = False) -> GcReport:
        """One retention pass over every classifier (or one; shared prediction segments only in a full pass)."""
        now = now or datetime.now(UTC)
        every = self.tenants.list()
        configs = [self.tenants.require(classifier)] if classifier is not None else every
        days = min((c.retention.predictions_days for c in every), default=None)
        report = GcReport(now=now, dry_run=dry_run, predictions_days=days)
        if classifier is None and days is not None:
            report.prediction_segments_deleted = self.prune_predictions(now, days, dry_run=dry_run)
        for cfg in configs:
            report.classifiers.append(self.run_classifier(cfg, now, dry_run=dry_run))
        return report

    def run_classifier(self, cfg: ClassifierConfig, now: datetime, *, dry_run: bool = False) -> ClassifierGc:
        out = ClassifierGc(classifier=cfg.name)
        out.uploads_deleted = self.prune_uploads(cfg, now, dry_run=dry_run)
        if self.task_pruner is not None:
            try:
                out.tasks_deleted = self.task_pruner(cfg, now, dry_run)
            except Exception:  # Label Studio down: the rest of the pass still runs, the next retries
                log.exception("retention: finished tasks of %s not pruned", cfg.name)
        out.versions_deleted, out.versions_protected = self.prune_versions(cfg, dry_run=dry_run)
        out.cache_pruned = self.prune_cache(cfg.name, dry_run=dry_run)
        return out

    def prune_predictions(self, now: datetime, days: float, *, dry_run: bool = False) -> int:
        old = [o.key for o in self.store.list_objects(PREDICTIONS_PREFIX) if _older(o.modified, now, days)]
        if not dry_run:
            for key in old:
                self.store.delete(key)
        return len(old)

    def prune_uploads(self, cfg: ClassifierConfig, now: datetime, *, dry_run: bool = False) -> list[str]:
        objects = {o.key: o.modified for o in self.store.list_objects(f"{UPLOADS_PREFIX}{cfg.name}/")}
        deleted = []
        for key, modified in sorted(objects.items()):
            if key.endswith(REPORT_SUFFIX) or not _older(modified, now, cfg.retention.uploads_days):
                continue
            if key + REPORT_SUFFIX not in objects:  # not ingested yet: the data is not anywhere else
                continue
            deleted += [key, key + REPORT_SUFFIX]
        for key, modified in objects.items():  # a report whose file is gone (rejected or already deleted)
            if (key.endswith(REPORT_SUFFIX) and key[: -len(REPORT_SUFFIX)] not in objects
                    and _older(modified, now, cfg.retention.uploads_days)):
                deleted.append(key)
        if not dry_run:
            for key in deleted:
                self.store.delete(key)
        return deleted

    def lineage(self, classifier: str) -> set[str]:
        """Versions the champion's lineage references: never deleted."""
        keep: set[str] = set()
        champion = self.registry.get_alias(classifier, CHAMPION)
        previous = self.registry.get_alias(classifier, PREVIOUS)
        keep |= {r.version for r in (champion, previous) if r is not None}
        keep |= {str(h["version"]) for h in self.store.get_json(champion_history_key(classifier)) or []}
        version = champion.version if champion else None
        while version is not None:  # parent chain of warm starts
            keep.add(version)
            parent = self.registry.version_tags(classifier, version).get("parent_version")
            version = parent if parent and parent not in keep else None
        return keep

    def prune_versions(self, cfg: ClassifierConfig, *, dry_run: bool = False) -> tuple[list[str], list[str]]:
        versions = [r.version for r in self.registry.versions(cfg.name)]
        if not versions:
            return [], []
        keep = self.lineage(cfg.name)
        newest = set(versions[-cfg.retention.keep_versions:])
        doomed = [v for v in versions if v not in keep and v not in newest]
        if not dry_run:
            for v in doomed:
                self.registry.delete_version(cfg.name, v)
                log.info("retention: deleted %s v%s", cfg.name, v)
        return doomed, sorted(keep, key=int)

    def prune_cache(self, classifier: str, *, dry_run: bool = False) -> list[str]:
        """Drop cached downloads other than the champion and previous champion (re-downloaded on demand)."""
        folder = self.cache_dir / classifier
        if not folder.is_dir():
            return []
        serving = {r.version for r in (self.registry.get_alias(classifier, CHAMPION),
                                       self.registry.get_alias(classifier, PREVIOUS)) if r is not None}
        pruned = sorted(p.name for p in folder.iterdir() if p.is_dir() and p.name not in serving)
        if not dry_run:
            for name in pruned:
                shutil.rmtree(folder / name, ignore_errors=True)
        return pruned


def run_gc_worker(settings: Settings, stop: threading.Event, *, task_pruner: TaskPruner | None = None,
                  running_jobs: RunningJobs | None = None, interval_s: float | None = None) -> None:
    """The scheduled passes of ``sift worker gc``: retention and drift every ``gc_interval_seconds``, the
    watchdog (dead-letter growth, stuck retrain jobs) every ``watch_interval_seconds``."""
    from ops.drift import Drift

    store = ObjectStore(settings)
    store.ensure_bucket()
    retention = Retention(settings, store, task_pruner=task_pruner)
    drift = Drift(settings, store, retention.registry)
    watchdog = Watchdog(settings, store, running_jobs=running_jobs)
    interval = interval_s if interval_s is not None else settings.gc_interval_seconds
    next_gc = 0.0
    while not stop.is_set():
        if time.monotonic() >= next_gc:
            next_gc = time.monotonic() + interval
            try:
                report = retention.run()
                log.info("retention pass: %d prediction segments, %s", report.prediction_segments_deleted,
                         {c.classifier: (len(c.uploads_deleted), len(c.tasks_deleted), c.versions_deleted)
                          for c in report.classifiers})
                for d in drift.check_all():
                    log.info("drift %s: %s (label PSI %s, confidence PSI %s, %d predictions)", d.classifier,
                             d.status, d.label_psi, d.confidence_psi, d.predictions)
            except Exception:
                log.exception("gc pass failed; retrying in %.0fs", interval)
        try:
            for alert in watchdog.check_all():
                log.info("watchdog raised %s for %s", alert.kind, alert.classifier)
        except Exception:
            log.exception("watchdog pass failed")
        stop.wait(min(settings.watch_interval_seconds, max(0.0, next_gc - time.monotonic())))
