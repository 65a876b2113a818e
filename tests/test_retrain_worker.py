"""The retrain worker on real Tansu + S3: counts reviewed labels durably and starts a job at N."""

from __future__ import annotations

import threading

from infra.bus import Bus
from infra.events import TOPIC_REVIEWED_LABELS, Event
from infra.objectstore import ObjectStore
from retrain.job import list_jobs
from retrain.triggers import Triggers
from retrain.worker import RetrainWorker
from tests.bus_helpers import isolated, wait_until
from tests.model_fixtures import topic_rows
from tests.retrain_helpers import make_classifier, reviewed, write_reviewed


class CountingWorker(RetrainWorker):
    """The real worker, counting what it has done: the markers this test waits on instead of sleeping."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.handled = 0  # reviewed-labels records handled (each then committed)
        self.checks = 0  # schedule/due checks completed

    def handle(self, topic: str, event: Event) -> None:
        super().handle(topic, event)
        self.handled += 1

    def check(self) -> None:
        super().check()
        self.checks += 1

    def after_two_checks(self) -> bool:
        start = self.checks
        return wait_until(lambda: self.checks >= start + 2, 30)


def test_job_starts_after_n_new_labels_and_counter_resets(sift_settings, mlflow_server):
    settings = isolated(sift_settings)  # a reviewed-labels topic of its own: offsets count only this test
    # min_examples_per_label is out of reach, so the job stops at validation: fast, and it proves the trigger
    cfg, _ = make_classifier(settings, min_new_labels=10, min_examples_per_label=1000)
    store = ObjectStore(settings)
    triggers = Triggers(store)
    events = reviewed(cfg.name, topic_rows(4, seed=7))[:10]
    write_reviewed(settings, events)  # the review stage stores, then publishes
    bus = Bus(settings)
    bus.ensure_topics()
    producer = bus.producer()
    stop = threading.Event()
    worker = CountingWorker(settings, stop, check_interval_s=1.0)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    try:
        for e in events[:9]:
            bus.send_sync(producer, TOPIC_REVIEWED_LABELS, e)
        bus.send_sync(producer, TOPIC_REVIEWED_LABELS, events[0])  # a redelivery: not counted twice
        assert wait_until(lambda: worker.handled == 10, 60), worker.handled
        assert triggers.new_labels(cfg.name) == 9
        assert worker.after_two_checks()  # two schedule/due checks at 9 < 10 queue nothing
        assert len(worker.due) == 0 and list_jobs(store, cfg.name) == []

        bus.send_sync(producer, TOPIC_REVIEWED_LABELS, events[9])
        assert wait_until(lambda: len(worker.jobs_run) == 1, 60), "no job ran"
        (job,) = list_jobs(store, cfg.name)
        assert job.trigger == "labels" and job.new_labels == 10
        assert job.status == "data_rejected" and "too_few_examples" in job.reason
        assert triggers.new_labels(cfg.name) == 0  # the job took the labels: no immediate re-trigger
        assert triggers.state(cfg.name).labels_total == 10
        assert worker.after_two_checks()
        assert len(worker.due) == 0 and len(list_jobs(store, cfg.name)) == 1 and len(worker.jobs_run) == 1
    finally:
        stop.set()
        thread.join(timeout=30)
        producer.close()
