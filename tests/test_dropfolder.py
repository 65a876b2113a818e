"""S3 drop folder on the real S3 server and broker: files become events once, reports land next to
them, markers survive a worker restart, re-uploads are ingested again, bad files get a report, and a
file that fails as a whole is marked failed instead of being retried on every poll."""

from __future__ import annotations

import json
import threading
import uuid

import pytest
from botocore.exceptions import ClientError

from feedback.dropfolder import MAX_ATTEMPTS, DropFolder, LeaseHeld, marker_key, run_dropfolder_worker
from infra.objectstore import ObjectStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from tests.bus_helpers import isolated, read_topic, wait_until

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def env(sift_settings: Settings):  # noqa: ANN201
    settings = isolated(sift_settings)
    store = ObjectStore(settings)
    name = f"drop-{uuid.uuid4().hex[:8]}"
    TenantStore(store).create(ClassifierConfig(name=name, labels=["sports", "tech"]))
    publisher = EventPublisher(settings)
    yield settings, store, name, publisher
    publisher.close()
    TenantStore(store).delete(name)


def test_dropped_files_are_ingested_once_with_a_report(env) -> None:  # noqa: ANN001
    settings, store, name, publisher = env
    good = f"feedback-uploads/{name}/2024/batch.csv"
    store.put_bytes(good, b"text,label\nCup final,sports\n,tech\nNew chip,tech\n")
    bad = f"feedback-uploads/{name}/broken.json"
    store.put_bytes(bad, b'{"classifier": "' + name.encode() + b'", "sentences": ["a"')

    folder = DropFolder(settings, publisher)
    reports = {r.source_key: r for r in folder.run_once()}
    assert set(reports) == {good, bad}
    assert (reports[good].rows_accepted, reports[good].rows_rejected) == (2, 1)
    assert reports[good].rejected[0].reason == "empty text"
    assert reports[bad].status == "rejected" and "truncated JSON" in (reports[bad].error or "")

    stored = store.get_json(good + ".report.json")
    assert stored["rows_accepted"] == 2 and stored["rejected"] == [{"row": 2, "reason": "empty text"}]
    assert store.get_json(marker_key(name, good))["status"] == "done"

    events = read_topic(settings, "review-requests", expect=2)
    assert [(e.text, e.source, e.suggested_label) for e in events] == [
        ("Cup final", "batch_feedback", "sports"), ("New chip", "batch_feedback", "tech")]

    # a restarted worker (fresh process state) finds the durable markers and does nothing
    assert DropFolder(settings, publisher).run_once() == []

    # a new version of the same key is ingested again
    store.put_bytes(good, b"text\nSomething else\n")
    again = DropFolder(settings, publisher).run_once()
    assert [(r.source_key, r.rows_accepted) for r in again] == [(good, 1)]


def test_api_uploads_and_reports_are_not_reingested(env) -> None:  # noqa: ANN001
    settings, store, name, publisher = env
    store.put_bytes(f"feedback-uploads/{name}/api/abc/f.csv", b"text\nx\n")
    store.put_bytes(f"feedback-uploads/{name}/old.csv.report.json", json.dumps({"x": 1}).encode())
    assert DropFolder(settings, publisher).run_once() == []


def test_worker_loop_picks_up_new_files_until_stopped(env) -> None:  # noqa: ANN001
    settings, store, name, _ = env
    stop = threading.Event()
    t = threading.Thread(target=run_dropfolder_worker, args=(settings, stop), kwargs={"poll_s": 0.5}, daemon=True)
    t.start()
    try:
        key = f"feedback-uploads/{name}/live.jsonl"
        store.put_bytes(key, b'{"text": "Late goal", "label": "sports", "verdict": "dislike"}\n')
        assert wait_until(lambda: store.get_json(key + ".report.json") is not None, 30)
    finally:
        stop.set()
        t.join(30)
    assert not t.is_alive()
    events = read_topic(settings, "review-requests", expect=1)
    assert [(e.text, e.verdict) for e in events] == [("Late goal", "dislike")]


def test_hostile_file_gets_its_report_once_and_is_not_retried(env) -> None:  # noqa: ANN001
    settings, store, name, publisher = env
    deep = f"feedback-uploads/{name}/deep.jsonl"
    store.put_bytes(deep, b'{"text": "Cup final"}\n' + b"[" * 200_000 + b"\n")
    folder = DropFolder(settings, publisher)
    [report] = folder.run_once()
    assert (report.status, report.rows_accepted, report.rejected[0].reason) == (
        "done", 1, "JSON nested deeper than 8 levels")
    assert store.get_json(marker_key(name, deep))["status"] == "done"
    assert DropFolder(settings, publisher).run_once() == []


def test_file_over_the_cap_is_marked_failed_without_reading_it(env) -> None:  # noqa: ANN001
    settings, store, name, publisher = env
    key = f"feedback-uploads/{name}/huge.csv"
    store.put_bytes(key, b"text\n" + b"row\n" * 1000)
    small = settings.model_copy(update={"max_upload_bytes": 1024})
    [report] = DropFolder(small, publisher).run_once()
    assert report.status == "rejected" and "the limit is 1024 (SIFT_MAX_UPLOAD_BYTES)" in (report.error or "")
    assert store.get_json(key + ".report.json")["status"] == "rejected"
    marker = store.get_json(marker_key(name, key))
    assert (marker["status"], marker["report_key"]) == ("failed", key + ".report.json")
    assert DropFolder(small, publisher).run_once() == []  # a restarted worker leaves it alone too


def test_file_that_keeps_failing_is_marked_failed_after_max_attempts(env) -> None:  # noqa: ANN001
    settings, store, name, publisher = env
    key = f"feedback-uploads/{name}/vanished.csv"
    store.put_bytes(key, b"text\nCup final\n")
    folder = DropFolder(settings, publisher)
    [item] = folder.pending(TenantStore(store).require(name))
    store.delete(key)  # gone between the listing and the download: every attempt fails the same way
    cfg = TenantStore(store).require(name)
    for attempt in range(1, MAX_ATTEMPTS):
        with pytest.raises(ClientError):
            folder.process(cfg, item.key, item.etag, item.size)
        assert store.get_json(marker_key(name, key))["attempts"] == attempt
    report = folder.process(cfg, item.key, item.etag, item.size)
    assert report.status == "rejected" and report.error.startswith(f"failed {MAX_ATTEMPTS} times: ClientError")
    assert store.get_json(marker_key(name, key))["status"] == "failed"


def test_two_replicas_never_ingest_one_file_twice(env) -> None:  # noqa: ANN001
    """The lease is a conditional write: a replica that lost the race, or finds the file held or
    finished, skips it; two replicas polling together publish each row once."""
    settings, store, name, publisher = env
    cfg = TenantStore(store).require(name)
    held = f"feedback-uploads/{name}/held.csv"
    store.put_bytes(held, b"text,label\nHeld row,sports\n")
    a, b = DropFolder(settings, publisher), DropFolder(settings, publisher)
    b.owner = a.owner + "-b"  # two processes
    [item] = a.pending(cfg)
    a._claim(name, item.key, item.etag)  # a is ingesting it
    with pytest.raises(LeaseHeld, match="being ingested"):
        b.process(cfg, item.key, item.etag, item.size)
    a.process(cfg, item.key, item.etag, item.size)
    with pytest.raises(LeaseHeld, match="already done"):
        b.process(cfg, item.key, item.etag, item.size)

    # both saw the file as new (marker absent when read); the second conditional create loses
    raced = f"feedback-uploads/{name}/raced.csv"
    store.put_bytes(raced, b"text,label\nRaced row,tech\n")
    [item] = a.pending(cfg)
    a._claim(name, item.key, item.etag)
    b.store.get_with_etag = lambda key: None  # type: ignore[method-assign]  # b read before a wrote
    with pytest.raises(LeaseHeld, match="claimed by another replica"):
        b._claim(name, item.key, item.etag)
    a.process(cfg, item.key, item.etag, item.size)

    many = [f"feedback-uploads/{name}/many-{i}.csv" for i in range(6)]
    for i, key in enumerate(many):
        store.put_bytes(key, f"text,label\nMany {i},tech\n".encode())
    c, d = DropFolder(settings, publisher), DropFolder(settings, publisher)
    d.owner = c.owner + "-d"
    threads = [threading.Thread(target=f.run_once) for f in (c, d)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert all(store.get_json(marker_key(name, key))["status"] == "done" for key in many)
    publisher.flush(15)
    texts = sorted(e.text for e in read_topic(settings, "review-requests", expect=8))
    assert texts == sorted(["Held row", "Raced row", *(f"Many {i}" for i in range(6))])
