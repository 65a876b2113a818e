"""Scale-out seams on the real broker: every replica learns every promotion and tenant change, without
consumer groups; two review workers split a partitioned topic and each request still becomes one task."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from kafka import KafkaAdminClient

from classifier.engine import ServingEngine
from classifier.model_watch import ModelWatcher
from infra.bus import Bus
from infra.events import TOPIC_MODEL_EVENTS, ModelEvent
from infra.settings import Settings
from review.worker import GROUP_ID as REVIEW_GROUP
from review.worker import partition_of
from tests.bus_helpers import committed_offset, isolated, wait_until
from tests.review_fixtures import review_env_fixture  # noqa: F401

pytestmark = pytest.mark.timeout(300)

PROMOTION_BOUND_S = 10.0  # the README's bound for a promotion to reach every replica


def _groups(settings: Settings) -> set[str]:
    admin = KafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    try:
        return {g["group_id"] if isinstance(g, dict) else g[0] for g in admin.list_groups()}
    finally:
        admin.close()


def test_every_replica_swaps_to_a_promotion_without_a_consumer_group(sift_settings: Settings,
                                                                     tiny_model_dir: Path) -> None:
    settings = isolated(sift_settings).model_copy(update={"model_poll_seconds": 600.0})  # only events explain a swap
    bus = Bus(settings)
    bus.ensure_topics()
    name = f"m-{uuid.uuid4().hex[:6]}"
    # an older event of a classifier on the same partition: a replica must not replay it
    old = next(c for c in (f"o-{i}-{name}" for i in range(1000))
               if partition_of(c, settings.kafka_partitions) == partition_of(name, settings.kafka_partitions))
    producer = bus.producer()
    bus.send_sync(producer, TOPIC_MODEL_EVENTS,
                  ModelEvent(classifier=old, version="9", action="promoted", registry_uri="models:/x"))

    champion = {name: ("1", str(tiny_model_dir))}
    asked: list[str] = []

    def resolve(classifier: str) -> tuple[str, str] | None:  # the registry alias, as the replica reads it
        asked.append(classifier)
        return champion.get(classifier)

    engines = [ServingEngine(resolve) for _ in range(2)]
    for engine in engines:
        assert engine.refresh(name) == "1"  # what a replica loads at start
    groups_before = _groups(settings)
    watchers = [ModelWatcher(settings, engine).start() for engine in engines]
    try:
        assert all(w.following.wait(30) for w in watchers)
        champion[name] = ("2", str(tiny_model_dir))
        bus.send_sync(producer, TOPIC_MODEL_EVENTS,
                      ModelEvent(classifier=name, version="2", action="promoted", registry_uri="models:/x"))
        assert wait_until(lambda: all(e.loaded_version(name) == "2" for e in engines), PROMOTION_BOUND_S)
        assert old not in asked  # read from the end: the older event (same partition, before it) was skipped
        assert _groups(settings) == groups_before  # no consumer group per replica start
    finally:
        producer.close()
        for w in watchers:
            w.stop()
        for engine in engines:
            asyncio.run(engine.aclose())


def test_a_key_revoked_and_a_threshold_changed_on_one_replica_hold_on_another(sift_settings: Settings,
                                                                              tiny_model_dir: Path,
                                                                              tiny_examples: dict[str, str]) -> None:
    """Two API replicas on one store and broker; the cache TTL is a minute, so only tenant-events can
    explain replica B refusing the key and applying the threshold within seconds."""
    from fastapi.testclient import TestClient

    from sift.app import create_app

    settings = isolated(sift_settings).model_copy(update={"config_cache_seconds": 60.0, "model_watch": False})
    Bus(settings).ensure_topics()
    name = f"t-{uuid.uuid4().hex[:6]}"
    text = next(iter(tiny_examples.values()))

    def app() -> TestClient:
        return TestClient(create_app(settings, engine=ServingEngine(lambda c: ("1", str(tiny_model_dir)))))

    with app() as a, app() as b:
        admin = {"x-admin-key": settings.admin_key}
        assert all(c.app.state.tenant_listener.following.wait(30) for c in (a, b))
        created = a.post("/v1/admin/classifiers", headers=admin,
                         json={"name": name, "labels": ["sports", "tech"], "threshold": 0.01})
        assert created.status_code == 201, created.text
        revoked_key = created.json()["api_key"]
        kept = a.post(f"/v1/admin/classifiers/{name}/keys", headers=admin).json()

        def classify(key: str) -> tuple[int, bool | None]:
            r = b.post(f"/v1/classifiers/{name}/classify", headers={"x-api-key": key}, json={"text": text})
            return r.status_code, r.json()["results"][0]["review_requested"] if r.status_code == 200 else None

        assert wait_until(lambda: classify(revoked_key) == (200, False), 30)  # B caches config and key now
        assert classify(kept["api_key"]) == (200, False)

        key_id = created.json()["classifier"]["api_key_ids"][0]
        assert a.delete(f"/v1/admin/classifiers/{name}/keys/{key_id}", headers=admin).status_code == 204
        assert a.patch(f"/v1/admin/classifiers/{name}", headers=admin, json={"threshold": 1.0}).status_code == 200

        bound_s = 10.0  # well inside the 60 s TTL
        assert wait_until(lambda: classify(revoked_key)[0] == 401, bound_s)
        assert wait_until(lambda: classify(kept["api_key"]) == (200, True), bound_s)  # every answer is below 1.0

        assert a.delete(f"/v1/admin/classifiers/{name}", headers=admin).status_code == 204
        assert wait_until(lambda: classify(kept["api_key"])[0] == 401, bound_s)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def owned(self, worker: str) -> list[int]:
        """The partitions a worker last said it owns."""
        said = [r.args[0] for r in list(self.records)
                if r.threadName == worker and r.msg.startswith("review worker owns partitions")]
        return list(said[-1]) if said else []  # type: ignore[call-overload]

    def handled(self) -> dict[str, set[str]]:
        """Classifier → the workers that handled its review requests."""
        out: dict[str, set[str]] = {}
        for r in list(self.records):
            if r.msg.startswith("review-request "):
                out.setdefault(str(r.args[1]), set()).add(r.threadName)  # type: ignore[index]
        return out


@pytest.mark.timeout(600)  # a first Label Studio start is slow
def test_two_review_workers_split_the_partitions_and_each_request_is_one_task(review_env) -> None:  # noqa: ANN001
    from infra.tenants import ClassifierConfig
    from review.labelstudio import ensure_project
    from tests.review_fixtures import LABELS, WorkerThread

    env = review_env
    n = env.settings.kafka_partitions
    assert n == 3 and Bus(env.settings).topic_partitions(["review-requests"]) == {"review-requests": 3}
    # one classifier per partition, so whichever way the group splits them both workers get requests
    cfgs = {partition_of(env.name, n): env.cfg}
    while len(cfgs) < n:
        name = f"rv-{uuid.uuid4().hex[:8]}"
        if partition_of(name, n) not in cfgs:
            cfg, _ = env.api.services.tenants.create(ClassifierConfig(name=name, labels=LABELS,
                                                                      near_duplicate_similarity=1.0))
            ensure_project(env.settings, env.api.services.tenants, cfg, env.projects)
            cfgs[partition_of(name, n)] = env.api.services.tenants.require(name)

    records = _Records()
    worker_log = logging.getLogger("review.worker")
    worker_log.addHandler(records)
    previous_level = worker_log.level
    worker_log.setLevel(logging.INFO)
    workers = [WorkerThread(env.settings, name=f"review-{i}").start() for i in range(2)]
    try:
        # both members of the group hold partitions, all three between them, before anything is published
        assert wait_until(lambda: all(records.owned(w.name) for w in workers)
                          and sorted(records.owned("review-0") + records.owned("review-1")) == list(range(n)), 60)
        requests = [env.request(f"split {cfg.name} {i}", classifier=cfg.name) for cfg in cfgs.values()
                    for i in range(2)]
        env.publish(*requests, requests[0])  # one redelivered duplicate: still one task

        def tasks_of(cfg: ClassifierConfig) -> list[dict]:
            return [t for _, page in env.projects._pages(cfg.label_studio_project_id,
                                                         '{"filters": {"conjunction": "and", "items": []}}',
                                                         fields="all") for t in page]

        def settled() -> bool:
            return (committed_offset(env.settings, REVIEW_GROUP, "review-requests") >= env.published
                    and all(len(tasks_of(cfg)) >= 2 for cfg in cfgs.values()))

        assert wait_until(settled, 120, 0.5)
        for cfg in cfgs.values():
            texts = sorted(t["data"]["text"] for t in tasks_of(cfg))
            assert texts == [f"split {cfg.name} 0", f"split {cfg.name} 1"], cfg.name
        handled = records.handled()
        # one worker per classifier (the message shows who handled what when it fails)
        assert all(len(handled.get(cfg.name, ())) == 1 for cfg in cfgs.values()), handled
        assert set().union(*handled.values()) == {"review-0", "review-1"}  # and both worked
    finally:
        for w in workers:
            w.halt()
        worker_log.removeHandler(records)
        worker_log.setLevel(previous_level)


def test_one_reconcile_replica_runs_each_pass(sift_settings: Settings) -> None:
    """Two reconcile replicas: the pass lease (a conditional write) goes to one until it expires."""
    from infra.objectstore import ObjectStore
    from review.collector import take_pass

    store = ObjectStore(sift_settings)
    name = f"rc-{uuid.uuid4().hex[:6]}"
    assert take_pass(store, name, "replica-a", lease_s=60)
    assert not take_pass(store, name, "replica-b", lease_s=60)  # a's pass is live
    assert take_pass(store, name, "replica-a", lease_s=0)  # a renews; with 0 s it expires at once
    assert take_pass(store, name, "replica-b", lease_s=60)  # an expired lease is taken over
    assert not take_pass(store, name, "replica-a", lease_s=60)
