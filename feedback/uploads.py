"""Turning one stored batch file into review requests and a report — shared by the upload API and
the S3 drop-folder worker.

Two streaming passes over a local (temporary) copy: the first validates everything and counts,
the second publishes. So a file that turns out to be malformed halfway (a truncated JSON
document) produces a 400 / a "rejected" report and *no* events, while memory stays bounded.
Event ids are ``stable_id(classifier, basis, row)`` where ``basis`` is the Idempotency-Key or the
file's content hash: re-sending the same file is deduped downstream instead of reviewed twice.

Publishing is durable (``publish_durable``, in chunks): when ``process_file`` returns, every
accepted row is acked by the broker or committed to the local spool. If a chunk can be neither,
``NotDurable`` propagates — the caller answers 503 / retries the file; rows of earlier chunks that
did get through carry the same event ids on the retry and are deduped.

``ingest_upload`` is the one entry point of both callers (the API route and the drop folder), so a
file gets the same limits, the same report and the same answer wherever it arrives: a file refused
as a whole raises ``UploadRejected`` (with its report stored and the HTTP status it deserves).
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import IO, Literal, Protocol

from pydantic import BaseModel, Field

from feedback.ingest import (
    SNIFF_BYTES,
    FeedbackRow,
    Format,
    MalformedFile,
    RowError,
    RowLimits,
    detect_format,
    iter_rows,
)
from infra.events import TOPIC_REVIEW_REQUESTS, Event, ReviewRequest, stable_id
from infra.objectstore import ObjectStore
from infra.publisher import NotDurable
from infra.settings import Settings
from infra.tenants import ClassifierConfig

log = logging.getLogger(__name__)

UPLOAD_PREFIX = "feedback-uploads"
API_SUBFOLDER = "api"  # uploads through the API land here; the drop-folder worker skips it
REPORT_SUFFIX = ".report.json"
MAX_REPORTED_REJECTS = 100
MAX_ROWS = 1_000_000
PUBLISH_CHUNK = 1000  # events per durable publish: one ack wait (or one spool transaction) each
CHUNK_TIMEOUT_S = 10.0


class Publisher(Protocol):
    def publish_durable(self, short_topic: str, events: Event | Sequence[Event], *,
                        timeout: float = 5.0) -> object: ...


class RejectedRow(BaseModel):
    row: int
    reason: str


class UploadReport(BaseModel):
    classifier: str
    upload_id: str = Field(description="basis of the event ids: Idempotency-Key hash or content hash")
    source_key: str = Field(description="the raw file in the object store")
    format: Format | None = None
    status: Literal["done", "rejected"] = "done"  # rejected: the file as a whole, see ``error``
    error: str | None = Field(default=None, description="why the whole file was rejected")
    rows_total: int = 0
    rows_accepted: int = 0
    rows_rejected: int = 0
    rejected: list[RejectedRow] = Field(default_factory=list, description=f"first {MAX_REPORTED_REJECTS}")
    rejected_truncated: bool = False
    started_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    finished_at: datetime | None = None


def prefix_for(classifier: str) -> str:
    return f"{UPLOAD_PREFIX}/{classifier}/"


def report_key(source_key: str) -> str:
    return source_key + REPORT_SUFFIX


def safe_filename(name: str | None) -> str:
    base = (name or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:120] or "upload"


def file_sha256(f: IO[bytes], chunk: int = 1 << 20) -> tuple[str, int]:
    """Content hash and size, reading in chunks; leaves the file at its start."""
    f.seek(0)
    digest, size = hashlib.sha256(), 0
    while block := f.read(chunk):
        digest.update(block)
        size += len(block)
    f.seek(0)
    return digest.hexdigest(), size


class KeepOpen:
    """File proxy whose close() does nothing: boto3's upload_fileobj closes what it is given, and
    the same temporary file is parsed after the raw copy is stored."""

    def __init__(self, f: IO[bytes]) -> None:
        self._f = f

    def read(self, n: int = -1) -> bytes:
        return self._f.read(n)

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def close(self) -> None:
        pass


def event_for(row: FeedbackRow, cfg: ClassifierConfig, basis: str) -> ReviewRequest:
    return ReviewRequest(
        event_id=stable_id("batch_feedback", cfg.name, basis, str(row.row)),
        classifier=cfg.name,
        text=row.text,
        predicted_label=row.predicted_label,
        source="batch_feedback",
        verdict=row.verdict,
        suggested_label=row.label,
        comment=row.comment,
        prediction_id=row.prediction_id,
    )


def process_file(
    f: IO[bytes],
    fmt: Format,
    cfg: ClassifierConfig,
    publisher: Publisher,
    *,
    basis: str,
    source_key: str,
    limits: RowLimits,
    max_rows: int = MAX_ROWS,
    progress: Callable[[int], None] | None = None,
) -> UploadReport:
    """Validate then publish every good row of a seekable file; MalformedFile leaves no events."""
    report = UploadReport(classifier=cfg.name, upload_id=basis, source_key=source_key, format=fmt)
    f.seek(0)
    for item in iter_rows(f, fmt, cfg, limits):  # pass 1: validate and count only
        report.rows_total += 1
        if report.rows_total > max_rows:
            raise MalformedFile(f"more than {max_rows} rows; split the file")
        if isinstance(item, RowError):
            report.rows_rejected += 1
            if len(report.rejected) < MAX_REPORTED_REJECTS:
                report.rejected.append(RejectedRow(row=item.row, reason=item.reason))
            else:
                report.rejected_truncated = True
        else:
            report.rows_accepted += 1
    f.seek(0)
    done = 0
    chunk: list[ReviewRequest] = []

    def flush_chunk() -> None:
        nonlocal done
        publisher.publish_durable(TOPIC_REVIEW_REQUESTS, chunk, timeout=CHUNK_TIMEOUT_S)
        done += len(chunk)
        chunk.clear()
        if progress:
            progress(done)

    for item in iter_rows(f, fmt, cfg, limits):  # pass 2: publish, durably, chunk by chunk
        if isinstance(item, FeedbackRow):
            chunk.append(event_for(item, cfg, basis))
            if len(chunk) >= PUBLISH_CHUNK:
                flush_chunk()
    if chunk:
        flush_chunk()
    report.finished_at = datetime.now(UTC)
    return report


def rejected_report(cfg: ClassifierConfig, *, basis: str, source_key: str, fmt: Format | None,
                    error: str) -> UploadReport:
    return UploadReport(classifier=cfg.name, upload_id=basis, source_key=source_key, format=fmt,
                        status="rejected", error=error, finished_at=datetime.now(UTC))


class UploadRejected(Exception):
    """The file as a whole is refused; its report is stored, ``status_code`` is the HTTP answer."""

    def __init__(self, report: UploadReport, status_code: int) -> None:
        super().__init__(report.error)
        self.report = report
        self.status_code = status_code


def size_error(size: int, settings: Settings) -> tuple[str, int] | None:
    """(reason, HTTP status) when a file of ``size`` bytes is refused before it is read."""
    if size == 0:
        return "the uploaded file is empty", 400
    if size > settings.max_upload_bytes:
        return (f"the file has {size} bytes; the limit is {settings.max_upload_bytes} (SIFT_MAX_UPLOAD_BYTES): "
                "split it"), 413
    return None


def reject_file(store: ObjectStore, cfg: ClassifierConfig, *, basis: str, source_key: str, fmt: Format | None,
                error: str, status_code: int) -> UploadRejected:
    """Store the "rejected" report of a file refused as a whole; the exception to raise for it."""
    report = rejected_report(cfg, basis=basis, source_key=source_key, fmt=fmt, error=error)
    _store_report(store, report)
    return UploadRejected(report, status_code)


def _store_report(store: ObjectStore, report: UploadReport, *, best_effort: bool = False) -> None:
    try:
        store.put_json(report_key(report.source_key), report.model_dump(mode="json"))
    except Exception:
        if not best_effort:
            raise
        log.warning("could not store the report of %s", report.source_key, exc_info=True)


def ingest_upload(
    f: IO[bytes],
    *,
    filename: str | None,
    cfg: ClassifierConfig,
    publisher: Publisher,
    store: ObjectStore,
    settings: Settings,
    basis: str,
    source_key: str,
    copy_raw: bool = False,
    progress: Callable[[int], None] | None = None,
) -> UploadReport:
    """Size cap, optional raw copy, format detection, validate-then-publish, report next to the file.

    Returns the "done" report (with its per-row rejections). Raises ``UploadRejected`` for a file
    refused as a whole (empty: 400, over ``SIFT_MAX_UPLOAD_BYTES``: 413, malformed: 400), and
    ``NotDurable`` (503 / retry later) after storing a report that says so.
    """
    size = f.seek(0, 2)
    f.seek(0)

    def reject(error: str, status_code: int, fmt: Format | None = None) -> UploadRejected:
        return reject_file(store, cfg, basis=basis, source_key=source_key, fmt=fmt, error=error,
                           status_code=status_code)

    if (refused := size_error(size, settings)) is not None:
        raise reject(*refused)
    if copy_raw:
        store.upload_stream(source_key, KeepOpen(f))
        f.seek(0)
    fmt: Format | None = None
    try:
        fmt = detect_format(filename, f.read(SNIFF_BYTES))
        report = process_file(f, fmt, cfg, publisher, basis=basis, source_key=source_key,
                              limits=RowLimits.from_settings(settings), progress=progress)
    except MalformedFile as exc:
        raise reject(str(exc), 400, fmt) from exc
    except NotDurable as exc:
        error = (f"not accepted, retry the same file later (rows that got through keep their event ids and are "
                 f"deduped): {exc}")
        _store_report(store, rejected_report(cfg, basis=basis, source_key=source_key, fmt=fmt, error=error),
                      best_effort=True)
        raise NotDurable(error) from exc
    _store_report(store, report)
    return report
