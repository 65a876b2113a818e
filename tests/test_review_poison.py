"""A review request that fails the same way on every attempt ends in the dead-letter topic, although
the review worker restarts its consumer loop every tick (real broker and S3; Label Studio is not
reached: the request fails before it would be)."""

from __future__ import annotations

import threading
import uuid

import pytest

from infra.bus import Bus
from infra.events import TOPIC_REVIEW_REQUESTS, ReviewRequest
from infra.local.procs import LOOPBACK, free_port
from infra.objectstore import ObjectStore
from infra.settings import Settings
from review.worker import run_review_worker
from tests.bus_helpers import isolated, read_topic

pytestmark = pytest.mark.timeout(180)


def test_poison_request_is_dead_lettered_across_consumer_restarts(sift_settings: Settings) -> None:
    settings = isolated(sift_settings).model_copy(update={"label_studio_url": f"http://{LOOPBACK}:{free_port()}"})
    name = f"poison-{uuid.uuid4().hex[:8]}"
    # a stored config that no longer validates (one label): every attempt raises the same ValidationError
    ObjectStore(settings).put_json(f"classifiers/{name}/config.json", {"name": name, "labels": ["only"]})
    bus = Bus(settings)
    bus.ensure_topics()
    producer = bus.producer()
    bus.send_sync(producer, TOPIC_REVIEW_REQUESTS,
                  ReviewRequest(event_id="poison-1", classifier=name, text="x", source="user_feedback"))
    producer.close(timeout=5)
    stop = threading.Event()
    # tick 0.5 s: the loop restarts more often than 5 attempts with backoff fit into one round
    worker = threading.Thread(target=run_review_worker, args=(settings, stop), kwargs={"tick_s": 0.5}, daemon=True)
    worker.start()
    try:
        [dead] = read_topic(settings, "dead-letter", expect=1, timeout_s=90)
    finally:
        stop.set()
        worker.join(30)
        ObjectStore(settings).delete(f"classifiers/{name}/config.json")
    assert '"event_id":"poison-1"' in dead.payload
    assert dead.error.startswith("failed 5 times: ValidationError")
