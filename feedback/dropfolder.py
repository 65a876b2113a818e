"""S3 drop folder: files put under ``s3://<bucket>/feedback-uploads/<classifier>/`` are ingested
like batch uploads (the same ``ingest_upload`` as the API), with a report object written next to
each file (``<key>.report.json``).

The local S3 server has no bucket notifications, so the worker polls by listing. What makes a
file finished is a durable marker at ``feedback-state/<classifier>/<sha256(key)>.json`` holding the
object's ETag: ``done`` (ingested; rows may have been rejected one by one) or ``failed`` (refused as
a whole — malformed, too large — or it failed ``MAX_ATTEMPTS`` times; the report says why). A
worker restart skips finished files, and a new upload under the same key (new ETag) is ingested
again. A marker in ``processing`` state is a lease: another worker takes the file over only after
``lease_s``. The lease is taken with a conditional write (``put_if``: create, or replace the version
just read), so of two drop-folder replicas that see the same new file only one ingests it; the other
gets ``LeaseHeld`` and skips it. A crash between publishing and the marker re-ingests the file with the same event ids
(content hash + row), which the review worker dedupes. Rows are published with
``publish_durable``, so the "done" marker is written only once each is acked or spooled; when
neither is possible (``NotDurable``) the file stays "processing" and is retried on the next poll
without using up an attempt: that is an outage, not the file's fault.

On AWS, replace the listing with S3 Event Notifications (``s3:ObjectCreated:*`` filtered on the
``feedback-uploads/`` prefix) → SQS, and call ``DropFolder.process(cfg, key, etag)`` per message;
keep the markers, since SQS delivers at least once.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import tempfile
import threading
import time
from typing import Literal

from pydantic import BaseModel

from feedback.uploads import (
    API_SUBFOLDER,
    REPORT_SUFFIX,
    UploadRejected,
    UploadReport,
    file_sha256,
    ingest_upload,
    prefix_for,
    reject_file,
    report_key,
    size_error,
)
from infra.objectstore import ObjectInfo, ObjectStore, PreconditionFailed
from infra.publisher import EventPublisher, NotDurable
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore

log = logging.getLogger(__name__)

MARKER_PREFIX = "feedback-state"
MAX_ATTEMPTS = 3  # unexpected failures of one file version before it is marked failed


class Marker(BaseModel):
    key: str
    etag: str
    status: Literal["processing", "done", "failed"]
    owner: str
    updated_at: float
    report_key: str | None = None
    attempts: int = 0  # started ingests of this ETag that ended in an unexpected error


class LeaseHeld(Exception):
    """Another drop-folder replica holds (or just finished) this file: skip it."""


def marker_key(classifier: str, key: str) -> str:
    return f"{MARKER_PREFIX}/{classifier}/{hashlib.sha256(key.encode()).hexdigest()[:40]}.json"


class DropFolder:
    def __init__(self, settings: Settings, publisher: EventPublisher, *, store: ObjectStore | None = None,
                 lease_s: float = 900.0) -> None:
        self.settings = settings
        self.store = store or ObjectStore(settings)
        self.tenants = TenantStore(self.store)
        self.publisher = publisher
        self.lease_s = lease_s
        self.owner = f"{socket.gethostname()}-{os.getpid()}"
        self._done: set[tuple[str, str]] = set()  # (key, etag) known finished: no marker read per poll

    def pending(self, cfg: ClassifierConfig) -> list[ObjectInfo]:
        """Files under the classifier's drop prefix that still need ingesting."""
        prefix = prefix_for(cfg.name)
        out = []
        for item in self.store.list_objects(prefix):
            key, etag = item.key, item.etag
            rest = key[len(prefix):]
            if not rest or key.endswith("/") or key.endswith(REPORT_SUFFIX):
                continue
            if rest.startswith(API_SUBFOLDER + "/"):
                continue  # ingested by the API itself
            if (key, etag) in self._done:
                continue
            marker = self._marker(cfg.name, key)
            if marker and marker.etag == etag:
                if marker.status in ("done", "failed"):
                    self._done.add((key, etag))
                    continue
                fresh = time.time() - marker.updated_at < self.lease_s
                if fresh and marker.owner != self.owner:
                    continue  # another worker holds the lease
            out.append(item)
        return out

    def _marker(self, classifier: str, key: str) -> Marker | None:
        data = self.store.get_json(marker_key(classifier, key))
        return None if data is None else Marker.model_validate(data)

    def _put_marker(self, classifier: str, marker: Marker) -> None:
        self.store.put_json(marker_key(classifier, marker.key), marker.model_dump())

    def _claim(self, classifier: str, key: str, etag: str) -> int:
        """Take the file's lease with a conditional write; returns the attempts made so far.

        Raises ``LeaseHeld`` when the file is finished, another live owner holds it, or another
        replica wrote the marker between our read and our write (the S3 server picks one winner).
        """
        mkey = marker_key(classifier, key)
        found = self.store.get_with_etag(mkey)
        previous = Marker.model_validate_json(found[0]) if found else None
        if previous is not None and previous.etag == etag:
            if previous.status in ("done", "failed"):
                raise LeaseHeld(f"{key} is already {previous.status}")
            if previous.owner != self.owner and time.time() - previous.updated_at < self.lease_s:
                raise LeaseHeld(f"{key} is being ingested by {previous.owner}")
        attempts = previous.attempts if previous is not None and previous.etag == etag else 0
        claim = Marker(key=key, etag=etag, status="processing", owner=self.owner, updated_at=time.time(),
                       attempts=attempts)
        try:
            self.store.put_if(mkey, claim.model_dump_json().encode(), etag=found[1] if found else None)
        except PreconditionFailed as exc:
            raise LeaseHeld(f"{key} was claimed by another replica") from exc
        return attempts

    def process(self, cfg: ClassifierConfig, key: str, etag: str, size: int | None = None) -> UploadReport:
        """Ingest one dropped file and mark it done or failed; raises only to be retried later.

        A file refused as a whole gets its "rejected" report and a "failed" marker. ``NotDurable``
        (broker and spool both unavailable) propagates and leaves the file "processing". Any other
        error propagates too, until the ``MAX_ATTEMPTS``-th: then the file is marked failed with a
        report naming the error, instead of being retried on every poll forever. ``LeaseHeld`` when
        another replica has the file.
        """
        attempts = self._claim(cfg.name, key, etag)
        basis = etag[:32]
        try:
            if size is not None and (refused := size_error(size, self.settings)) is not None:
                raise reject_file(self.store, cfg, basis=basis, source_key=key, fmt=None, error=refused[0],
                                  status_code=refused[1])
            tmp_dir = self.settings.data_dir if self.settings.data_dir.exists() else None
            with tempfile.TemporaryFile(dir=tmp_dir) as f:
                self.store.download_to(key, f)
                digest, _size = file_sha256(f)
                basis = digest[:32]
                report = ingest_upload(f, filename=key, cfg=cfg, publisher=self.publisher, store=self.store,
                                       settings=self.settings, basis=basis, source_key=key)
            status: Literal["done", "failed"] = "done"
        except UploadRejected as exc:
            report, status = exc.report, "failed"
        except NotDurable:
            raise  # an outage, not this file: retried on the next poll, no attempt used
        except Exception as exc:
            attempts += 1
            if attempts < MAX_ATTEMPTS:
                self._put_marker(cfg.name, Marker(key=key, etag=etag, status="processing", owner=self.owner,
                                                  updated_at=time.time(), attempts=attempts))
                raise
            log.exception("%s failed %d times; marked failed", key, attempts)
            report = reject_file(self.store, cfg, basis=basis, source_key=key, fmt=None, status_code=500,
                                 error=f"failed {attempts} times: {type(exc).__name__}: {exc}"[:2000]).report
            status = "failed"
        # ingest_upload publishes durably: every accepted row is acked or in the spool, so "done" is safe
        self._put_marker(cfg.name, Marker(key=key, etag=etag, status=status, owner=self.owner,
                                          updated_at=time.time(), report_key=report_key(key), attempts=attempts))
        self._done.add((key, etag))
        log.info("ingested %s: %s accepted, %s rejected%s", key, report.rows_accepted, report.rows_rejected,
                 f" (file rejected: {report.error})" if report.error else "")
        return report

    def run_once(self) -> list[UploadReport]:
        reports = []
        for cfg in self.tenants.list():
            for item in self.pending(cfg):
                try:
                    reports.append(self.process(cfg, item.key, item.etag, item.size))
                except LeaseHeld as exc:
                    log.debug("skipping %s: %s", item.key, exc)
                except Exception:  # S3 or broker hiccup: the marker stays "processing" by us, retried next poll
                    log.exception("could not ingest %s", item.key)
        return reports


def run_dropfolder_worker(settings: Settings, stop: threading.Event, poll_s: float = 5.0) -> None:
    """Poll every classifier's drop prefix until ``stop`` is set (``sift worker dropfolder``)."""
    publisher = EventPublisher(settings)
    folder = DropFolder(settings, publisher)
    log.info("drop-folder worker watching s3://%s/feedback-uploads/<classifier>/ every %.0fs",
             settings.bucket, poll_s)
    try:
        while not stop.is_set():
            try:
                folder.run_once()
            except Exception:
                log.exception("drop-folder poll failed")
            stop.wait(poll_s)
    finally:
        publisher.close()
