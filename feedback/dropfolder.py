"""S3 drop folder: files put under ``s3://<bucket>/feedback-uploads/<classifier>/`` are ingested
like batch uploads, with a report object written next to each file (``<key>.report.json``).

The local S3 server has no bucket notifications, so the worker polls by listing. What makes a
file "done" is a durable marker at ``feedback-state/<classifier>/<sha256(key)>.json`` holding the
object's ETag: a worker restart skips finished files, and a new upload under the same key (new
ETag) is ingested again. A marker in ``processing`` state is a lease: another worker takes the
file over only after ``lease_s``. A crash between publishing and the marker re-ingests the file
with the same event ids (content hash + row), which the review worker dedupes. Rows are published
with ``publish_durable``, so the "done" marker is written only once each is acked or spooled; when
neither is possible the file stays "processing" and is retried on the next poll.

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

from feedback.ingest import SNIFF_BYTES, MalformedFile, detect_format
from feedback.uploads import (
    API_SUBFOLDER,
    REPORT_SUFFIX,
    UploadReport,
    file_sha256,
    prefix_for,
    process_file,
    rejected_report,
    report_key,
)
from infra.objectstore import ObjectStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore

log = logging.getLogger(__name__)

MARKER_PREFIX = "feedback-state"


class Marker(BaseModel):
    key: str
    etag: str
    status: Literal["processing", "done"]
    owner: str
    updated_at: float
    report_key: str | None = None


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

    def pending(self, cfg: ClassifierConfig) -> list[tuple[str, str]]:
        """(key, etag) of files under the classifier's drop prefix that still need ingesting."""
        prefix = prefix_for(cfg.name)
        out = []
        paginator = self.store.client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.store.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                key, etag = item["Key"], item.get("ETag", "").strip('"')
                rest = key[len(prefix):]
                if not rest or key.endswith("/") or key.endswith(REPORT_SUFFIX):
                    continue
                if rest.startswith(API_SUBFOLDER + "/"):
                    continue  # ingested by the API itself
                if (key, etag) in self._done:
                    continue
                marker = self._marker(cfg.name, key)
                if marker and marker.etag == etag:
                    if marker.status == "done":
                        self._done.add((key, etag))
                        continue
                    fresh = time.time() - marker.updated_at < self.lease_s
                    if fresh and marker.owner != self.owner:
                        continue  # another worker holds the lease
                out.append((key, etag))
        return out

    def _marker(self, classifier: str, key: str) -> Marker | None:
        data = self.store.get_json(marker_key(classifier, key))
        return None if data is None else Marker.model_validate(data)

    def _put_marker(self, classifier: str, marker: Marker) -> None:
        self.store.put_json(marker_key(classifier, marker.key), marker.model_dump())

    def process(self, cfg: ClassifierConfig, key: str, etag: str) -> UploadReport:
        """Ingest one dropped file; MalformedFile becomes a "rejected" report, not an exception."""
        self._put_marker(cfg.name, Marker(key=key, etag=etag, status="processing", owner=self.owner,
                                          updated_at=time.time()))
        with tempfile.TemporaryFile(dir=self.settings.data_dir if self.settings.data_dir.exists() else None) as f:
            self.store.client.download_fileobj(self.store.bucket, key, f)
            digest, _size = file_sha256(f)
            basis = digest[:32]
            fmt = None
            try:
                fmt = detect_format(key, f.read(SNIFF_BYTES))
                report = process_file(f, fmt, cfg, self.publisher, basis=basis, source_key=key,
                                      max_text_chars=self.settings.max_text_chars)
            except MalformedFile as exc:
                report = rejected_report(cfg, basis=basis, source_key=key, fmt=fmt, error=str(exc))
        # process_file publishes durably: every accepted row is acked or in the spool, so "done" is safe
        self.store.put_json(report_key(key), report.model_dump(mode="json"))
        self._put_marker(cfg.name, Marker(key=key, etag=etag, status="done", owner=self.owner,
                                          updated_at=time.time(), report_key=report_key(key)))
        self._done.add((key, etag))
        log.info("ingested %s: %s accepted, %s rejected%s", key, report.rows_accepted, report.rows_rejected,
                 f" (file rejected: {report.error})" if report.error else "")
        return report

    def run_once(self) -> list[UploadReport]:
        reports = []
        for cfg in self.tenants.list():
            for key, etag in self.pending(cfg):
                try:
                    reports.append(self.process(cfg, key, etag))
                except Exception:  # S3 hiccup: the marker stays "processing" by us, retried next poll
                    log.exception("could not ingest %s", key)
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
