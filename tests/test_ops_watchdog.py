"""The watchdog of `sift worker gc` on the real broker and store: dead-letter growth and stuck retrain
jobs reach the classifier's webhook and the operator's, once each, across watchdog restarts."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from infra.events import TOPIC_DEAD_LETTER, DeadLetter
from infra.local.procs import free_port
from infra.objectstore import ObjectStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig, RetrainPolicy, TenantStore
from ops.deadletters import DeadLetters
from ops.watchdog import Watchdog
from retrain import paths
from retrain.job import JobRecord
from sift.gc import running_jobs
from tests.alert_hook import AlertHook
from tests.bus_helpers import isolated, wait_until


def _dead_letter(settings: Settings, classifier: str, n: int) -> None:
    pub = EventPublisher(settings)
    try:
        for i in range(n):
            pub.publish(TOPIC_DEAD_LETTER, DeadLetter(classifier=classifier, original_topic="review-requests",
                                                      payload=f'{{"event_id": "e{i}"}}', error="permanent: test"))
        assert pub.flush(30), pub.stats()
    finally:
        pub.close()


def test_dead_letter_growth_and_a_stuck_job_alert_once_each(own_bucket_settings: Settings) -> None:
    team, operator = AlertHook(), AlertHook()
    settings = isolated(own_bucket_settings).model_copy(update={"alert_webhook_url": operator.url,
                                                                "retrain_stuck_after_seconds": 3600.0})
    store = ObjectStore(settings)
    name, quiet = f"wd-{uuid.uuid4().hex[:6]}", f"wd-quiet-{uuid.uuid4().hex[:6]}"
    tenants = TenantStore(store)
    tenants.create(ClassifierConfig(name=name, labels=["a", "b"], retrain=RetrainPolicy(alert_webhook_url=team.url)))
    tenants.create(ClassifierConfig(name=quiet, labels=["a", "b"]))
    dlq = DeadLetters(settings, store)

    def watchdog() -> Watchdog:  # a fresh one each pass: what it told is in the store, not in memory
        return Watchdog(settings, store, running_jobs=running_jobs(store), dead_letters=dlq)

    try:
        _dead_letter(settings, name, 2)
        assert wait_until(lambda: len(dlq.entries(classifier=name)) == 2, 30)
        [alert] = watchdog().check_all()
        assert (alert.kind, alert.classifier) == ("dead_letters", name)
        assert (alert.details["new"], alert.details["open"]) == (2, 2)
        assert [b["details"]["new"] for b in team.of("dead_letters", name)] == [2]
        assert [b["details"]["new"] for b in operator.of("dead_letters", name)] == [2]  # the operator hears all
        assert "sift dlq list" in team.of("dead_letters")[0]["text"]

        assert watchdog().check_all() == []  # nothing new: no second alert
        # a pass that cannot read the topic (broker unreachable) forgets nothing it told
        down = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
        assert Watchdog(settings, store, dead_letters=DeadLetters(down, store)).check_all() == []
        assert watchdog().check_all() == []
        _dead_letter(settings, name, 1)
        assert wait_until(lambda: len(dlq.entries(classifier=name)) == 3, 30)
        [again] = watchdog().check_all()
        assert (again.details["new"], again.details["open"]) == (1, 3)

        # a purged letter leaves the state; purging raises nothing
        dlq.purge(dlq.entries(classifier=name)[:1])
        assert watchdog().check_all() == []

        # a job record that says running, started long ago: a worker killed mid-job never finishes it
        started = datetime.now(UTC) - timedelta(hours=3)
        store.put_json(paths.job(name, "job-stuck"), JobRecord(job_id="job-stuck", classifier=name, trigger="test",
                                                               started_at=started).model_dump(mode="json"))
        store.put_json(paths.job(quiet, "job-fresh"), JobRecord(job_id="job-fresh", classifier=quiet,
                                                                trigger="test").model_dump(mode="json"))
        [stuck] = watchdog().check_all()
        assert (stuck.kind, stuck.classifier, stuck.details["job_id"]) == ("retrain_stuck", name, "job-stuck")
        assert stuck.details["running_s"] >= 3 * 3600 - 60
        assert watchdog().check_all() == []  # told once per job
        assert [b["kind"] for b in team.bodies] == ["dead_letters", "dead_letters", "retrain_stuck"]
        assert [b["classifier"] for b in operator.bodies] == [name, name, name]
    finally:
        team.close()
        operator.close()
