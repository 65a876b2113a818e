"""The retrain worker on real Tansu + S3: counts reviewed labels durably and starts a job at N."""

from __future__ import annotations

import threading
import time

from infra.bus import Bus
from infra.events import TOPIC_REVIEWED_LABELS
from infra.objectstore import ObjectStore
from retrain.job import list_jobs
from retrain.triggers import Triggers
from retrain.worker import run_retrain_worker
from tests.model_fixtures import topic_rows
from tests.retrain_helpers import make_classifier, reviewed, write_reviewed


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.2)


def test_job_starts_after_n_new_labels_and_counter_resets(sift_settings, mlflow_server):
    # min_examples_per_label is out of reach, so the job stops at validation: fast, and it proves the trigger
    cfg, _ = make_classifier(sift_settings, min_new_labels=10, min_examples_per_label=1000)
    store = ObjectStore(sift_settings)
    triggers = Triggers(store)
    events = reviewed(cfg.name, topic_rows(4, seed=7))[:10]
    write_reviewed(sift_settings, events)  # the review stage stores, then publishes
    bus = Bus(sift_settings)
    bus.ensure_topics()
    producer = bus.producer()
    stop = threading.Event()
    worker = threading.Thread(target=run_retrain_worker, args=(sift_settings, stop),
                              kwargs={"check_interval_s": 1.0}, daemon=True)
    worker.start()
    try:
        for e in events[:9]:
            bus.send_sync(producer, TOPIC_REVIEWED_LABELS, e)
        bus.send_sync(producer, TOPIC_REVIEWED_LABELS, events[0])  # a redelivery: not counted twice
        _wait(lambda: triggers.new_labels(cfg.name) == 9, 60, "9 counted labels")
        time.sleep(2.0)  # two schedule/due checks pass without a job at 9 < 10
        assert list_jobs(store, cfg.name) == []

        bus.send_sync(producer, TOPIC_REVIEWED_LABELS, events[9])
        _wait(lambda: any(j.done for j in list_jobs(store, cfg.name)), 60, "the triggered job")
        (job,) = list_jobs(store, cfg.name)
        assert job.trigger == "labels" and job.new_labels == 10
        assert job.status == "data_rejected" and "too_few_examples" in job.reason
        assert triggers.new_labels(cfg.name) == 0  # the job took the labels: no immediate re-trigger
        assert triggers.state(cfg.name).labels_total == 10
        time.sleep(2.0)
        assert len(list_jobs(store, cfg.name)) == 1
    finally:
        stop.set()
        worker.join(timeout=30)
        producer.close()
