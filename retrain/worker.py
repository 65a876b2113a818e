"""``sift worker retrain``: count reviewed labels, run due retrain jobs one at a time.

Three threads: the Kafka consumer (group ``sift.retrain``) counts each reviewed label durably
before its offset is committed and queues the classifier once its policy's ``min_new_labels`` is
reached; a checker looks at schedules (and re-queues classifiers whose count is already due, which
covers a crash between counting and running); the job thread runs queued jobs one after another,
so training never blocks the consumer (whose group session would otherwise expire).

No thread dies of a store or registry error: each logs and carries on. A failed job leaves its
labels counted (the trigger stays armed); the job thread waits ``failure_backoff_s`` before it
retries that classifier, so a persistent fault means one alert per backoff, not a tight loop.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import OrderedDict

from infra.bus import Bus, PermanentError, TransientError
from infra.events import TOPIC_REVIEWED_LABELS, Event, ReviewedLabel
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import TenantCache, TenantStore
from retrain.job import JobOptions, run_retrain_job
from retrain.triggers import Triggers

log = logging.getLogger(__name__)

GROUP = "retrain"  # short: the group is Bus.group(GROUP), "sift.retrain" by default


class DueQueue:
    """Classifiers waiting for a job, each at most once, in arrival order."""

    def __init__(self) -> None:
        self._items: OrderedDict[str, str] = OrderedDict()
        self._cond = threading.Condition()

    def put(self, classifier: str, trigger: str) -> None:
        with self._cond:
            if classifier not in self._items:
                self._items[classifier] = trigger
                self._cond.notify()

    def get(self, timeout: float) -> tuple[str, str] | None:
        with self._cond:
            if not self._items and not self._cond.wait(timeout):
                return None
            if not self._items:
                return None
            return self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


class RetrainWorker:
    def __init__(self, settings: Settings, stop: threading.Event, *, check_interval_s: float = 30.0,
                 failure_backoff_s: float = 300.0, options: JobOptions | None = None) -> None:
        self.settings = settings
        self.stop = stop
        self.check_interval_s = check_interval_s
        self.options = options or JobOptions()
        self.store = ObjectStore(settings)
        self.tenants = TenantStore(self.store)
        self.cache = TenantCache(self.tenants, settings.config_cache_seconds)
        self.triggers = Triggers(self.store)
        self.due = DueQueue()
        self.jobs_run: list[str] = []
        self.failure_backoff_s = failure_backoff_s
        self._retry_at: dict[str, float] = {}  # classifier -> monotonic time its failed job may be retried

    def handle(self, topic: str, event: Event) -> None:
        if not isinstance(event, ReviewedLabel):
            return
        cfg = self.cache.get(event.classifier)
        if cfg is None:
            raise PermanentError(f"unknown classifier {event.classifier!r}")
        try:
            new = self.triggers.record(event)
        except Exception as exc:  # the store is down: retry this record, do not skip it
            raise TransientError(f"cannot count the label: {exc}") from exc
        if new >= cfg.retrain.min_new_labels:
            self.due.put(cfg.name, "labels")

    def check(self) -> None:
        for cfg in self.tenants.list():
            try:
                new = self.triggers.new_labels(cfg.name)
                if self.triggers.check_schedule(cfg.name, cfg.retrain.schedule) and new > 0:
                    self.due.put(cfg.name, "schedule")
                elif new >= cfg.retrain.min_new_labels:
                    self.due.put(cfg.name, "labels")
            except Exception:
                log.warning("trigger check of %s failed", cfg.name, exc_info=True)

    def _consume(self) -> None:
        bus = Bus(self.settings, client_id="sift-retrain")
        while not self.stop.is_set():
            consumer = producer = None
            try:
                with contextlib.suppress(Exception):
                    bus.ensure_topics()
                consumer = bus.consumer(GROUP, [TOPIC_REVIEWED_LABELS])
                producer = bus.producer()
                bus.run_consumer(consumer, self.handle, stop=self.stop, dead_letter_producer=producer)
            except Exception:
                log.warning("reviewed-labels consumer failed; retrying", exc_info=True)
                self.stop.wait(2.0)
            finally:
                for client in (consumer, producer):
                    if client is not None:
                        with contextlib.suppress(Exception):
                            client.close()

    def _check_loop(self) -> None:
        while True:
            try:
                self.check()
            except Exception:
                log.warning("trigger check failed", exc_info=True)
            if self.stop.wait(self.check_interval_s):
                return

    def _job_loop(self) -> None:
        while not self.stop.is_set():
            item = self.due.get(timeout=0.5)
            if item is None:
                continue
            try:
                self._run_due(*item)
            except Exception:  # the store or registry is down: the checker queues the classifier again
                log.warning("could not run the due retrain job of %s", item[0], exc_info=True)

    def _run_due(self, classifier: str, trigger: str) -> None:
        if time.monotonic() < self._retry_at.get(classifier, 0.0):
            return  # its last job failed recently; the checker queues it again after the backoff
        cfg = self.tenants.get(classifier)
        if cfg is None:
            return
        if trigger == "labels" and self.triggers.new_labels(classifier) < cfg.retrain.min_new_labels:
            return  # a job that just ran already took these labels
        options = self.options.model_copy(update={"trigger": trigger, "job_id": None})
        record = run_retrain_job(self.settings, classifier, options, store=self.store)
        self.jobs_run.append(record.job_id)
        if record.status == "failed":
            self._retry_at[classifier] = time.monotonic() + self.failure_backoff_s
        else:
            self._retry_at.pop(classifier, None)

    def run(self) -> None:
        self.store.ensure_bucket()
        threads = [threading.Thread(target=t, name=n, daemon=True) for t, n in
                   ((self._consume, "retrain-consumer"), (self._check_loop, "retrain-check"),
                    (self._job_loop, "retrain-jobs"))]
        for t in threads:
            t.start()
        self.stop.wait()
        for t in threads:
            t.join(timeout=30)


def run_retrain_worker(settings: Settings, stop: threading.Event, **kwargs: object) -> None:
    """Entry point of ``sift worker retrain``; returns once ``stop`` is set (a running job finishes first)."""
    RetrainWorker(settings, stop, **kwargs).run()  # type: ignore[arg-type]
