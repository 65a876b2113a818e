"""Collecting finished reviews: webhook deliveries and the reconciliation pass share one path.

Label Studio sends webhooks inside the annotating request, with a 1 s timeout and no retry
queue, so a webhook can be lost at any time; the reconciliation pass reads finished tasks
through the API and closes that gap. Both go through ``Collector.record``, which is idempotent:
the event id is derived from (annotation id, chosen label), so the same answer seen twice is one
record, and a reviewer who changes their answer produces a new one (the latest wins on read).

Per finished review, in this order:
1. ``datasets/<classifier>/reviewed/<reviewed-at>-<event-id>.jsonl`` (immutable, one per append);
2. a ``reviewed-labels`` event, published durably (acked or spooled; ``publish`` raises otherwise);
3. the marker ``review/<classifier>/collected/<event-id>`` that makes later deliveries no-ops.
A crash between steps repeats them on the next delivery; readers dedupe by event id.

Nothing from Label Studio is trusted as is: a label that is not one of the classifier's labels is
refused (counted in ``sift_review_labels_refused_total``, never stored: one would end every later
retrain in ``data_rejected``), and a review time in the future is clamped to now (a far-future
``updated_at`` would otherwise win "latest review" for its text forever).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import get_args

from prometheus_client import Counter
from pydantic import BaseModel

from infra.bus import Bus
from infra.events import TOPIC_REVIEWED_LABELS, ReviewedLabel, ReviewSource, stable_id
from infra.objectstore import ObjectStore, PreconditionFailed
from infra.reviewed import write_reviewed
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from review.labelstudio import FinishedAnnotation, LabelStudioUnavailable, ReviewProjects, parse_annotation
from review.metrics import RECONCILED, WEBHOOKS

log = logging.getLogger(__name__)

Publish = Callable[[ReviewedLabel], None]

REFUSED = Counter("sift_review_labels_refused_total", "reviews refused before they were stored",
                  ["classifier", "reason"])

RECONCILE_OVERLAP = timedelta(minutes=10)  # tolerate clock skew between Label Studio and us
FULL_SCAN_EVERY = 20  # passes; catches edits that did not move a task's updated_at


def _collected_prefix(classifier: str) -> str:
    return f"review/{classifier}/collected/"


def reviewed_event(classifier: str, ann: FinishedAnnotation) -> ReviewedLabel | None:
    """The reviewed-label event of one annotation; None when the task is not one of ours."""
    data = ann.data
    text = data.get("text")
    if not isinstance(text, str):
        return None
    origin = data.get("origin")
    return ReviewedLabel(
        event_id=stable_id(classifier, "ls-annotation", str(ann.annotation_id), ann.label or "\x00skipped"),
        classifier=classifier,
        text=text,
        label=ann.label,
        skipped=ann.skipped,
        reviewer=ann.reviewer or (f"user-{ann.reviewer_id}" if ann.reviewer_id is not None else None),
        review_task_id=ann.task_id,
        source=origin if origin in get_args(ReviewSource) else None,
        predicted_label=data.get("predicted_label"),
        prediction_id=data.get("prediction_id"),
        model_version=data.get("model_version"),
        reviewed_at=_not_after_now(ann.updated_at),
    )


def _not_after_now(when: datetime | None) -> datetime:
    now = datetime.now(UTC)
    if when is None:
        return now
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return min(when, now)


class ReconcileReport(BaseModel):
    classifier: str
    tasks_seen: int = 0
    annotations_seen: int = 0
    recorded: int = 0
    full_scan: bool = False
    seconds: float = 0.0


class Collector:
    def __init__(self, settings: Settings, store: ObjectStore, tenants: TenantStore, publish: Publish,
                 projects: ReviewProjects | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tenants = tenants
        self.publish = publish
        self.projects = projects or ReviewProjects.from_settings(settings)
        self._refused: set[str] = set()  # event ids already counted (reconciliation sees them again)

    def collected_ids(self, classifier: str) -> set[str]:
        p = _collected_prefix(classifier)
        return {k[len(p):] for k in self.store.list_keys(p)}

    def record(self, classifier: str, ann: FinishedAnnotation, known: set[str] | None = None,
               labels: list[str] | None = None) -> bool:
        """Write one finished review (dataset file, event, marker); False if already recorded or refused.

        ``labels``: the classifier's labels (read from its config when not given).
        """
        event = reviewed_event(classifier, ann)
        if event is None:
            return False
        if event.label is not None:
            if labels is None:
                cfg = self.tenants.get(classifier)
                labels = cfg.labels if cfg is not None else []
            if event.label not in labels:
                if event.event_id not in self._refused:
                    if len(self._refused) > 100_000:
                        self._refused.clear()  # bounded; at worst a refusal is counted again
                    self._refused.add(event.event_id)
                    REFUSED.labels(classifier, "unknown_label").inc()
                log.warning("review of task %s in %s refused: label %r is not one of the classifier's",
                            ann.task_id, classifier, event.label[:100])
                return False
        marker = _collected_prefix(classifier) + event.event_id
        done = (event.event_id in known) if known is not None else self.store.exists(marker)
        if done:
            return False
        key = write_reviewed(self.store, event)
        self.publish(event)
        self.store.put_bytes(marker, key.encode())
        if known is not None:
            known.add(event.event_id)
        log.info("review of task %s in %s recorded (%s)", ann.task_id, classifier,
                 "skipped" if event.skipped else "labelled")
        return True

    def classifier_of(self, project_id: int | None, data: dict) -> ClassifierConfig | None:
        """The classifier a task belongs to: named in its data, confirmed by the project id."""
        name = data.get("classifier")
        if not isinstance(name, str):
            return None
        cfg = self.tenants.get(name)
        if cfg is None or (project_id is not None and cfg.label_studio_project_id != project_id):
            return None
        return cfg

    def handle_webhook(self, payload: dict) -> bool:
        """Process one ANNOTATION_CREATED/UPDATED payload; True when a new record was written."""
        task, annotation = payload.get("task") or {}, payload.get("annotation") or {}
        if not task or not annotation or "id" not in annotation:
            WEBHOOKS.labels("ignored").inc()
            return False
        project = payload.get("project") or {}
        project_id = project.get("id") if isinstance(project, dict) else task.get("project")
        cfg = self.classifier_of(project_id, task.get("data") or {})
        if cfg is None:
            log.warning("webhook for task %s of an unknown project %s ignored", task.get("id"), project_id)
            WEBHOOKS.labels("ignored").inc()
            return False
        ann = parse_annotation(task, annotation)
        if ann.reviewer is None and ann.reviewer_id is not None:
            with contextlib.suppress(LabelStudioUnavailable):
                ann.reviewer = self.projects.user_email(ann.reviewer_id)
        recorded = self.record(cfg.name, ann, labels=cfg.labels)
        WEBHOOKS.labels("recorded" if recorded else "known").inc()
        return recorded

    def reconcile(self, classifier: str, *, full: bool = False) -> ReconcileReport:
        """Read finished tasks through the API and record whatever is missing.

        Incremental by default (tasks updated since the last pass, minus an overlap); the
        watermark advances only after a pass that completed.
        """
        started = time.monotonic()
        began = datetime.now(UTC)
        report = ReconcileReport(classifier=classifier)
        cfg = self.tenants.get(classifier)
        if cfg is None or cfg.label_studio_project_id is None:
            return report
        state_key = f"review/{classifier}/reconcile.json"
        state = self.store.get_json(state_key) or {}
        since = None
        if not full and state.get("watermark"):
            since = datetime.fromisoformat(state["watermark"]) - RECONCILE_OVERLAP
        report.full_scan = since is None
        known = self.collected_ids(classifier)
        for task in self.projects.finished_tasks(cfg.label_studio_project_id, updated_since=since):
            report.tasks_seen += 1
            if self.classifier_of(cfg.label_studio_project_id, task.get("data") or {}) is None:
                continue
            for ann in self.projects.annotations(task):
                report.annotations_seen += 1
                report.recorded += self.record(classifier, ann, known, labels=cfg.labels)
        self.store.put_json(state_key, {"watermark": began.isoformat()})
        RECONCILED.labels(classifier).inc(report.recorded)
        report.seconds = round(time.monotonic() - started, 3)
        return report


def reconcile(settings: Settings, classifier: str, *, full: bool = False) -> ReconcileReport:
    """One reconciliation pass for one classifier, publishing synchronously (acked before marked)."""
    bus = Bus(settings, client_id="sift-reconcile")
    producer = bus.producer()
    try:
        store = ObjectStore(settings)
        collector = Collector(settings, store, TenantStore(store),
                              lambda ev: bus.send_sync(producer, TOPIC_REVIEWED_LABELS, ev))
        return collector.reconcile(classifier, full=full)
    finally:
        producer.close(timeout=5)


def take_pass(store: ObjectStore, classifier: str, owner: str, lease_s: float) -> bool:
    """Claim the next reconciliation pass of ``classifier`` for ``lease_s`` seconds.

    With several reconcile replicas, each pass runs once: the claim is a conditional write of
    ``review/<classifier>/reconcile-lease.json`` (create, or replace the expired version just read),
    so the S3 server lets one replica win. False when another replica's claim is still live.
    """
    key = f"review/{classifier}/reconcile-lease.json"
    found = store.get_with_etag(key)
    now = time.time()
    if found is not None:
        lease = json.loads(found[0])
        if lease.get("owner") != owner and lease.get("until", 0) > now:
            return False
    body = json.dumps({"owner": owner, "until": now + lease_s}).encode()
    try:
        store.put_if(key, body, etag=found[1] if found else None)
    except PreconditionFailed:
        return False
    return True


def run_reconcile_loop(settings: Settings, stop: threading.Event, *, interval_s: float = 30.0) -> None:
    """`sift worker reconcile`: a pass over every classifier every ``interval_s`` seconds."""
    bus = Bus(settings, client_id="sift-reconcile")
    producer = None
    store = ObjectStore(settings)
    tenants = TenantStore(store)
    passes = 0
    owner = f"{socket.gethostname()}-{os.getpid()}-{threading.get_ident()}"
    while not stop.is_set():
        try:
            producer = producer or bus.producer()
            collector = Collector(settings, store, tenants,
                                  lambda ev, p=producer: bus.send_sync(p, TOPIC_REVIEWED_LABELS, ev))
            for cfg in tenants.list():
                if stop.is_set():
                    break
                if not take_pass(store, cfg.name, owner, interval_s):
                    continue  # another replica runs this interval's pass
                report = collector.reconcile(cfg.name, full=passes % FULL_SCAN_EVERY == 0)
                if report.recorded:
                    log.info("reconciliation recovered %d reviews of %s", report.recorded, cfg.name)
            passes += 1
        except Exception as exc:
            log.warning("reconciliation pass failed: %s", exc)
        stop.wait(interval_s)
    if producer is not None:
        producer.close(timeout=5)
