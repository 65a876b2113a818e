"""The per-classifier retrain lease on a real SeaweedFS: conditional writes decide every race, and
neither the lease renewer nor the worker's job thread dies of an S3 outage."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra.local.procs import free_port
from infra.local.seaweed import SeaweedServer
from infra.objectstore import ObjectStore, PreconditionFailed
from infra.settings import Settings
from retrain import paths
from retrain.lock import ClassifierLease, LeaseLost, LockBusy


def _wait(cond, timeout: float, what: str) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {what}"
        time.sleep(0.05)


def _store(s3_server) -> ObjectStore:
    return ObjectStore(Settings(s3_endpoint=s3_server.endpoint, s3_access_key=s3_server.access_key,
                                s3_secret_key=s3_server.secret_key, s3_region=s3_server.region,
                                bucket=s3_server.bucket))


def _race(leases: list[ClassifierLease]) -> tuple[list[ClassifierLease], list[Exception]]:
    """Acquire every lease at once (a barrier lines the threads up); (winners, errors)."""
    barrier, won, lost = threading.Barrier(len(leases)), [], []

    def take(lease: ClassifierLease) -> None:
        barrier.wait()
        try:
            won.append(lease.acquire())
        except Exception as exc:
            lost.append(exc)

    threads = [threading.Thread(target=take, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return won, lost


def test_conditional_put_is_decided_by_the_server(s3_server):
    store, key = _store(s3_server), f"probe/{uuid.uuid4().hex}"
    first = store.put_if(key, b"a")
    with pytest.raises(PreconditionFailed):
        store.put_if(key, b"b")  # If-None-Match: * on an existing object
    second = store.put_if(key, b"c", etag=first)
    with pytest.raises(PreconditionFailed):
        store.put_if(key, b"d", etag=first)  # If-Match with a stale ETag
    assert store.get_with_etag(key) == (b"c", second)


def test_of_racing_jobs_exactly_one_takes_the_lease(s3_server):
    store, name = _store(s3_server), f"lease-{uuid.uuid4().hex[:8]}"
    won, lost = _race([ClassifierLease(store, name, holder=f"job {i}") for i in range(8)])
    try:
        assert len(won) == 1 and len(lost) == 7
        assert all(isinstance(e, LockBusy) for e in lost)
        assert store.get_json(paths.lock(name))["token"] == won[0].token
    finally:
        for lease in won:
            lease.release()
    assert store.get_json(paths.lock(name)) is None
    with ClassifierLease(store, name) as again:  # released: free for the next job
        assert again.held


def test_expired_lease_is_taken_over_by_exactly_one_and_its_old_holder_cannot_renew(s3_server):
    store, name = _store(s3_server), f"lease-{uuid.uuid4().hex[:8]}"
    stale = ClassifierLease(store, name, ttl_s=1.0, renew_every_s=3600, holder="frozen job")
    stale.acquire()  # a holder that stops renewing (a frozen or crashed process)
    _wait(lambda: store.get_json(paths.lock(name))["expires_at"] < time.time(), 10, "the lease to expire")

    won, lost = _race([ClassifierLease(store, name, holder=f"job {i}") for i in range(6)])
    try:
        assert len(won) == 1 and all(isinstance(e, LockBusy) for e in lost) and len(lost) == 5
        assert store.get_json(paths.lock(name))["token"] == won[0].token
        assert stale.renew() is False  # its If-Match ETag is stale: the server refuses it
        with pytest.raises(LeaseLost):
            stale.check()
        stale.release()  # must not delete the new holder's lease
        assert store.get_json(paths.lock(name))["token"] == won[0].token
        won[0].check()
    finally:
        for lease in won:
            lease.release()


@pytest.fixture
def own_s3(tmp_path: Path) -> Iterator[SeaweedServer]:
    """A private SeaweedFS this test may stop (the session one serves MLflow and Kafka)."""
    server = SeaweedServer(tmp_path / "s3", s3_port=free_port(), access_key="lease-test",
                           secret_key="lease-test-secret", region="us-east-1", die_with_parent=True).start()
    server.create_bucket("lease")
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.integration  # starts its own SeaweedFS
def test_renewer_survives_an_s3_outage_and_keeps_the_lease(own_s3):
    store = ObjectStore(Settings(s3_endpoint=own_s3.endpoint, s3_access_key="lease-test",
                                 s3_secret_key="lease-test-secret", s3_region="us-east-1", bucket="lease"))
    lease = ClassifierLease(store, "outage", ttl_s=60, renew_every_s=0.3).acquire()
    try:
        _wait(lambda: lease.renewals >= 1, 10, "a renewal")
        own_s3.stop()
        _wait(lambda: lease.renew_failures >= 1, 60, "a failed renewal")
        own_s3.start()
        renewed = lease.renewals
        _wait(lambda: lease.renewals > renewed, 60, "a renewal after the outage")
        assert lease._renewer is not None and lease._renewer.is_alive()
        lease.check()
        assert json.loads(store.get_bytes(paths.lock("outage")))["token"] == lease.token
    finally:
        lease.release()


def test_rollback_takes_the_lease_so_it_never_interleaves_with_a_job(s3_server):
    from infra.registry import Registry
    from retrain.promote import RollbackError, rollback

    store, name = _store(s3_server), f"lease-{uuid.uuid4().hex[:8]}"
    registry = Registry(Settings(mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}"))  # never reached
    with ClassifierLease(store, name, holder="job 1"), pytest.raises(RollbackError, match="already running"):
        rollback(registry, store, lambda event: None, name)


@pytest.mark.integration  # starts its own SeaweedFS
def test_worker_job_thread_survives_an_s3_outage(own_s3, caplog, monkeypatch):
    from infra.tenants import ClassifierConfig, TenantStore
    from retrain.job import list_jobs
    from retrain.worker import RetrainWorker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # no MLflow here: the job ends at its data check
    settings = Settings(s3_endpoint=own_s3.endpoint, s3_access_key="lease-test", s3_secret_key="lease-test-secret",
                        s3_region="us-east-1", bucket="lease", mlflow_tracking_uri=f"http://127.0.0.1:{free_port()}")
    store = ObjectStore(settings)
    cfg, _ = TenantStore(store).create(ClassifierConfig(name="outage-w", labels=["a", "b"]))
    stop = threading.Event()
    worker = RetrainWorker(settings, stop)
    thread = threading.Thread(target=worker._job_loop, daemon=True)
    thread.start()
    try:
        own_s3.stop()
        worker.due.put(cfg.name, "schedule")
        _wait(lambda: any("could not run the due retrain job" in r.getMessage() for r in caplog.records), 120,
              "the job thread to hit the outage")
        own_s3.start()
        worker.due.put(cfg.name, "schedule")
        _wait(lambda: any(j.done for j in list_jobs(store, cfg.name)), 120, "a job run by the same thread")
        assert thread.is_alive()
    finally:
        stop.set()
        thread.join(30)
