"""The review queue: dedupe, priority and an ordered window of open Label Studio tasks.

The open tasks of a classifier's project are always the ``cfg.review_window`` most urgent
requests: free places are filled from a priority backlog, and a request that outranks the
least urgent open task nobody has started (no answer, draft or reviewer edit) takes its place;
that task is deleted and its item goes back to the backlog with its priority. Reviewers see the
window best-first through the project's default tab (ordered by ``data.priority``). All queue
state lives in the object store, never only in memory, so a worker or Label Studio restart loses
and duplicates nothing:

``review/<classifier>/items/<text-hash>.json``
    one record per distinct text: state (``backlog`` → ``creating`` → ``open``), merged request
    count, the event ids already applied (dedupe by event id), priority, Label Studio task id.
``review/<classifier>/backlog/<tier>-<margin>-<first-ms>-<text-hash>``
    empty marker objects; S3 lists keys in order, so the listing *is* the priority queue
    (user-reported errors first, then the smallest top-2 margin, then oldest).
``review/<classifier>/dirty/<text-hash>``
    an open task whose data (request count, comment) could not be updated while Label Studio
    was down; synced on the next refill.

Crash safety: an item is saved before its marker is written (a redelivered event repairs a
missing marker); before import the item is marked ``creating`` with a unique ``item_key`` that
also goes into the task data, so a crash between import and save is resolved by adopting the
task found by that key instead of importing a second one. A displaced item is saved back to the
backlog with ``stale_task_id`` before its task is deleted: if the delete never happens, the next
pass deletes that task, or the item adopts it back when it re-enters the window. One Kafka
partition (key = classifier) is consumed by one worker at a time, so each classifier's queue has
one writer.
"""

from __future__ import annotations

import itertools
import logging
from collections import OrderedDict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from infra.bus import PermanentError
from infra.events import ReviewRequest, ReviewSource
from infra.objectstore import ObjectStore
from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantStore
from infra.texts import text_hash
from review.labelstudio import (
    LabelStudioNotFound,
    LabelStudioRejected,
    LabelStudioUnavailable,
    ReviewProjects,
    TaskSpec,
    ensure_project,
)
from review.metrics import BACKLOG, DISPLACED, NEAR_DUPLICATES, OPEN_TASKS
from review.similarity import similarity, sketch

log = logging.getLogger(__name__)

MAX_EVENT_IDS = 1000
MAX_CACHED_SKETCHES = 20_000
MAX_NEAR_DUPLICATE_SKIPS = 500  # per refill: a backlog full of copies costs a bounded scan
ORIGIN_TEXT = {
    "user_feedback": "a user reported this prediction",
    "batch_feedback": "batch feedback",
    "low_confidence": "the model was unsure",
    "audit_sample": "random audit sample",
}


def _now() -> datetime:
    return datetime.now(UTC)


def tier_of(req: ReviewRequest) -> int:
    """0: a user said the model is wrong; 1: other explicit feedback; 2: the model was unsure, or an audit sample."""
    disputed = req.verdict == "dislike" or (
        req.suggested_label is not None and req.suggested_label != req.predicted_label)
    if req.source in ("user_feedback", "batch_feedback") and disputed:
        return 0
    if req.source in ("user_feedback", "batch_feedback"):
        return 1
    return 2


def margin_of(req: ReviewRequest) -> float:
    """Top-2 margin ("breaking ties"), the confidence when only one score is known, else 1.

    An audit sample's is its uniform ``audit_rank``: its place in the window must not depend on
    how sure the model was (see ``classifier.routing.review_request_for``)."""
    if req.source == "audit_sample" and req.audit_rank is not None:
        return min(1.0, max(0.0, float(req.audit_rank)))
    scores = sorted(req.scores.values(), reverse=True)
    if len(scores) >= 2:
        value = scores[0] - scores[1]
    elif req.confidence is not None:
        value = req.confidence
    elif scores:
        value = scores[0]
    else:
        value = 1.0
    return min(1.0, max(0.0, float(value)))


def marker_priority(key: str) -> float:
    """``ReviewItem.priority`` read back from a backlog marker (``marker()``) without loading the item."""
    tier, margin = key.split("-")[:2]
    return round((2 - int(tier)) + (1 - int(margin) / 1_000_000), 6)


class ReviewItem(BaseModel):
    classifier: str
    text_hash: str
    text: str
    generation: int = 0  # bumped when a text comes back after its previous task was answered
    state: Literal["backlog", "creating", "open"] = "backlog"
    predicted_label: str | None = None
    confidence: float | None = None
    model_version: str | None = None
    prediction_id: str | None = None
    origin: ReviewSource = "low_confidence"
    verdict: str | None = None
    suggested_label: str | None = None
    comment: str | None = None
    request_count: int = 0
    event_ids: list[str] = Field(default_factory=list)
    tier: int = 2
    margin: float = 1.0
    backlog_key: str | None = None
    task_id: int | None = None
    stale_task_id: int | None = None  # the task it was displaced from, until that task is deleted
    first_requested_at: datetime = Field(default_factory=_now)
    last_requested_at: datetime = Field(default_factory=_now)

    @property
    def item_key(self) -> str:
        return f"{self.text_hash}.{self.generation}"

    @property
    def priority(self) -> float:
        """Higher is more urgent (stored in task data so the Data Manager can sort by it)."""
        return round((2 - self.tier) + (1 - self.margin), 6)

    def marker(self) -> str:
        ms = int(self.first_requested_at.timestamp() * 1000)
        return f"{self.tier}-{int(round(self.margin * 1_000_000)):07d}-{ms:013d}-{self.text_hash}"

    def merge(self, req: ReviewRequest) -> None:
        """Fold another request for the same text in: count it, keep the most urgent priority."""
        self.request_count += 1
        self.event_ids = (self.event_ids + [req.event_id])[-MAX_EVENT_IDS:]
        tier = tier_of(req)
        if tier < self.tier:
            self.origin = req.source
        self.tier = min(self.tier, tier)
        self.margin = min(self.margin, margin_of(req))
        self.comment = req.comment or self.comment
        self.suggested_label = req.suggested_label or self.suggested_label
        self.verdict = req.verdict or self.verdict
        if req.predicted_label is not None:
            self.predicted_label, self.confidence = req.predicted_label, req.confidence
            self.model_version = req.model_version or self.model_version
            self.prediction_id = req.prediction_id or self.prediction_id
        self.last_requested_at = max(self.last_requested_at, req.created_at)

    @classmethod
    def new(cls, req: ReviewRequest, generation: int = 0) -> ReviewItem:
        item = cls(classifier=req.classifier, text_hash=text_hash(req.classifier, req.text), text=req.text,
                   generation=generation, origin=req.source, tier=tier_of(req), margin=margin_of(req),
                   first_requested_at=req.created_at, last_requested_at=req.created_at)
        item.merge(req)
        item.tier, item.margin, item.origin = tier_of(req), margin_of(req), req.source
        return item

    def task_data(self) -> dict[str, Any]:
        """Task data in Label Studio. Never a field named ``source`` (LS renders the whole task)."""
        guess = (f"Model's guess: {self.predicted_label} ({self.confidence:.0%} confident)"
                 if self.predicted_label and self.confidence is not None
                 else f"Model's guess: {self.predicted_label or 'none'}")
        context = (f"Why it is here: {ORIGIN_TEXT.get(self.origin, self.origin)} · requested "
                   f"{self.request_count}× · priority {self.priority:.3f}")
        if self.suggested_label:
            context += f" · user suggests {self.suggested_label}"
        return {
            "text": self.text,
            "guess": guess,
            "context": context,
            "comment_display": f"User comment: {self.comment}" if self.comment else "No user comment",
            "predicted_label": self.predicted_label,
            "confidence": self.confidence,
            "origin": self.origin,
            "comment": self.comment,
            "suggested_label": self.suggested_label,
            "request_count": self.request_count,
            "priority": self.priority,
            "classifier": self.classifier,
            "item_key": self.item_key,
            "text_hash": self.text_hash,
            "prediction_id": self.prediction_id,
            "model_version": self.model_version,
            "requested_at": self.first_requested_at.isoformat(),
        }

    def task_spec(self) -> TaskSpec:
        return TaskSpec(data=self.task_data(), predicted_label=self.predicted_label,
                        score=self.confidence, model_version=self.model_version)


def _prefix(classifier: str, kind: str) -> str:
    return f"review/{classifier}/{kind}/"


def task_is_finished(task: dict[str, Any]) -> bool:
    return (task.get("total_annotations") or 0) > 0 or (task.get("cancelled_annotations") or 0) > 0


class ReviewQueue:
    def __init__(self, settings: Settings, store: ObjectStore, tenants: TenantStore,
                 projects: ReviewProjects | None = None) -> None:
        self.settings = settings
        self.store = store
        self.tenants = tenants
        self.projects = projects or ReviewProjects.from_settings(settings)
        # (classifier, project, webhook secret) provisioned: a rotated secret re-registers the webhook
        self._verified: set[tuple[str, int, str | None]] = set()
        self._sketches: OrderedDict[str, frozenset[int]] = OrderedDict()  # by text hash (texts never change)

    # ---- durable records ------------------------------------------------------------------------

    def load(self, classifier: str, h: str) -> ReviewItem | None:
        data = self.store.get_json(f"{_prefix(classifier, 'items')}{h}.json")
        return None if data is None else ReviewItem.model_validate(data)

    def save(self, item: ReviewItem) -> None:
        self.store.put_json(f"{_prefix(item.classifier, 'items')}{item.text_hash}.json", item.model_dump(mode="json"))

    def _put_marker(self, item: ReviewItem) -> None:
        assert item.backlog_key
        self.store.put_bytes(_prefix(item.classifier, "backlog") + item.backlog_key, b"")

    def _del_marker(self, classifier: str, key: str) -> None:
        self.store.delete(_prefix(classifier, "backlog") + key)

    def backlog_keys(self, classifier: str) -> list[str]:
        p = _prefix(classifier, "backlog")
        return [k[len(p):] for k in self.store.list_keys(p)]

    def backlog_size(self, classifier: str) -> int:
        return len(self.backlog_keys(classifier))

    # ---- requests ------------------------------------------------------------------------------

    def submit(self, req: ReviewRequest) -> str:
        """Record one request durably; returns 'duplicate', 'merged' or 'queued'.

        When this returns, the request is either merged into an item (open task or backlog) or
        is a known event id: the caller may commit its offset. Label Studio being down is not
        an error here (the backlog holds the request); the object store being down is (raises).
        """
        cfg = self.tenants.get(req.classifier)
        if cfg is None:
            raise PermanentError(f"unknown classifier {req.classifier!r}")
        if not req.text.strip():
            raise PermanentError("empty text")
        h = text_hash(req.classifier, req.text)
        item = self.load(req.classifier, h)
        if item is not None and req.event_id in item.event_ids:
            if item.state == "backlog" and item.backlog_key:
                self._put_marker(item)  # a crash may have left the item saved but not queued
            return "duplicate"
        outcome = "queued"
        if item is not None and item.state == "open":
            finished = False
            try:
                task = self.projects.get_task(item.task_id) if item.task_id is not None else None
                finished = task is None or task_is_finished(task)
            except LabelStudioUnavailable:
                pass  # assume still open: the count is kept and synced later
            if finished:
                item = ReviewItem.new(req, generation=item.generation + 1).model_copy(
                    update={"event_ids": (item.event_ids + [req.event_id])[-MAX_EVENT_IDS:]})
            else:
                item.merge(req)
                self.save(item)
                self._sync_task(item)
                return "merged"
        elif item is not None:  # backlog or creating: merge, re-key the marker if priority moved
            item.merge(req)
            old = item.backlog_key
            item.backlog_key = item.marker()
            self.save(item)
            self._put_marker(item)
            if old and old != item.backlog_key:
                self._del_marker(item.classifier, old)
            outcome = "merged"
        if item is None:
            item = ReviewItem.new(req)
        if outcome == "queued":
            item.backlog_key = item.marker()
            self.save(item)
            self._put_marker(item)
        try:
            self.refill(cfg)
        except LabelStudioUnavailable as exc:
            log.warning("Label Studio unavailable, %s stays in the backlog: %s", req.event_id, exc)
        return outcome

    def _sync_task(self, item: ReviewItem) -> None:
        dirty = _prefix(item.classifier, "dirty") + item.text_hash
        try:
            assert item.task_id is not None
            self.projects.update_task_data(item.task_id, item.task_data())
        except (LabelStudioUnavailable, LabelStudioRejected) as exc:
            log.warning("task %s not updated (%s); will sync later", item.task_id, exc)
            self.store.put_bytes(dirty, b"")
            return
        self.store.delete(dirty)

    def sync_dirty(self, classifier: str) -> None:
        p = _prefix(classifier, "dirty")
        for key in list(self.store.list_keys(p)):
            item = self.load(classifier, key[len(p):])
            if item is None or item.state != "open":
                self.store.delete(key)
                continue
            self._sync_task(item)

    # ---- the window ----------------------------------------------------------------------------

    def _project(self, cfg: ClassifierConfig) -> int:
        pid = cfg.label_studio_project_id
        if pid is None or (cfg.name, pid, cfg.webhook_secret) not in self._verified:
            pid = ensure_project(self.settings, self.tenants, cfg, self.projects)
            self._verified.add((cfg.name, pid, cfg.webhook_secret))
        return pid

    def refill(self, cfg: ClassifierConfig) -> int:
        """Move the most urgent backlog items into Label Studio until the window is full.

        Returns the number of tasks created or adopted. Raises LabelStudioUnavailable when Label
        Studio is down (items stay in the backlog, nothing is lost).
        """
        keys = self.backlog_keys(cfg.name)
        if not keys:
            return 0
        try:
            return self._refill(cfg, keys)
        except LabelStudioNotFound:
            # the project is gone (Label Studio database recreated): provision again, once
            self._verified = {v for v in self._verified if v[0] != cfg.name}
            cfg.label_studio_project_id = None
            return self._refill(cfg, keys)

    def _backlog_items(self, classifier: str, keys: list[str]) -> Iterator[tuple[str, ReviewItem]]:
        """Backlog items best-first, loaded lazily; stale markers (re-keyed, already open) are dropped."""
        for key in keys:
            item = self.load(classifier, key.rsplit("-", 1)[-1])
            if item is None or item.state == "open" or item.backlog_key != key:
                self._del_marker(classifier, key)
                continue
            yield key, item

    def _refill(self, cfg: ClassifierConfig, keys: list[str]) -> int:
        project_id = self._project(cfg)
        open_tasks = self.projects.count_open(project_id)
        OPEN_TASKS.labels(cfg.name).set(open_tasks)
        pending = self._diverse(cfg, project_id, self._backlog_items(cfg.name, keys))
        free = max(0, cfg.review_window - open_tasks)
        batch = list(itertools.islice(pending, free))
        entered = self._open_batch(cfg, project_id, batch)
        if len(batch) < free:
            return entered  # the backlog ran out: nothing is left to displace with
        return entered + self._displace(cfg, project_id, pending, marker_priority(keys[0]))

    def _sketch(self, h: str, text: str) -> frozenset[int]:
        found = self._sketches.get(h)
        if found is None:
            found = self._sketches[h] = sketch(text)
            while len(self._sketches) > MAX_CACHED_SKETCHES:
                self._sketches.popitem(last=False)
        return found

    def _diverse(self, cfg: ClassifierConfig, project_id: int,
                 pending: Iterator[tuple[str, ReviewItem]]) -> Iterator[tuple[str, ReviewItem]]:
        """``pending`` without the model-doubt items that nearly repeat an open task or one chosen
        before them (they stay in the backlog until their twin is answered). Explicit feedback
        always passes: a user is waiting on it. Skips at most ``MAX_NEAR_DUPLICATE_SKIPS`` per pass."""
        if cfg.near_duplicate_similarity >= 1:
            yield from pending
            return
        window: list[frozenset[int]] | None = None  # the open tasks' sketches, read once if needed
        passed: list[frozenset[int]] = []
        skipped = 0
        for key, item in pending:
            mine = self._sketch(item.text_hash, item.text)
            if item.tier == 2:
                if window is None:
                    window = [self._sketch(str(t["data"].get("text_hash") or f"task-{t['id']}"),
                                           str(t["data"].get("text", "")))
                              for t in self.projects.open_task_data(project_id)]
                if any(similarity(mine, other) >= cfg.near_duplicate_similarity
                       for other in itertools.chain(window, passed)):
                    skipped += 1
                    NEAR_DUPLICATES.labels(cfg.name).inc()
                    if skipped >= MAX_NEAR_DUPLICATE_SKIPS:
                        return
                    continue
            passed.append(mine)
            yield key, item

    def _displace(self, cfg: ClassifierConfig, project_id: int, pending: Iterator[tuple[str, ReviewItem]],
                  bound: float) -> int:
        """Swap the lowest-priority unstarted open tasks for better backlog items, one for one.

        The window is full here; ``pending`` continues best-first after what just entered. A tie
        does not swap (no churn). Returns the number of items that entered the window.
        """
        # the best marker bounds every waiting priority: asking Label Studio first keeps the common
        # case (nothing to swap) at one request, before any item is loaded or the window read
        victims = self.projects.displaceable(project_id, below=bound)
        incoming = next(pending, None) if victims else None
        if incoming is None:
            return 0
        swaps: list[tuple[ReviewItem, int]] = []
        batch: list[tuple[str, ReviewItem]] = []
        for task in victims:
            task_id, data = int(task["id"]), task.get("data") or {}
            owner = self.load(cfg.name, str(data.get("text_hash")))
            if owner is not None and owner.stale_task_id == task_id:  # a displacement cut short:
                self.projects.delete_task(task_id)  # finish it, the place is free
                owner.stale_task_id = None
                self.save(owner)
            elif owner is None or owner.state != "open" or owner.task_id != task_id:
                continue  # not ours to move (an import being adopted, a foreign task)
            elif owner.priority >= incoming[1].priority:
                continue  # not below this item (task data may be stale): the item itself decides
            else:
                swaps.append((owner, task_id))
            batch.append(incoming)
            incoming = next(pending, None)
            if incoming is None:
                break
        for owner, task_id in swaps:
            self._back_to_backlog(owner, task_id)
        if swaps:
            log.info("review window of %s: %d task(s) displaced by higher-priority requests",
                     cfg.name, len(swaps))
            DISPLACED.labels(cfg.name).inc(len(swaps))
        return self._open_batch(cfg, project_id, batch)

    def _back_to_backlog(self, item: ReviewItem, task_id: int) -> None:
        """Return an open item to the backlog and delete its task.

        Saved first with ``stale_task_id``: a crash before the delete leaves a task that the next
        pass deletes (or adopts back when the item re-enters), never a second task for the item.
        """
        item.state, item.task_id, item.stale_task_id = "backlog", None, task_id
        item.backlog_key = item.marker()
        self.save(item)
        self._put_marker(item)
        self.projects.delete_task(task_id)
        item.stale_task_id = None
        self.save(item)

    def _open_batch(self, cfg: ClassifierConfig, project_id: int, batch: list[tuple[str, ReviewItem]]) -> int:
        """Give each (marker, item) a task: adopt one left by a crash, else import (one request)."""
        if not batch:
            return 0
        to_import: list[tuple[str, ReviewItem]] = []
        for key, item in batch:
            if item.stale_task_id is not None:  # displaced, but its task was never deleted
                task = self.projects.get_task(item.stale_task_id)
                if task is not None:
                    self._opened(item, key, item.stale_task_id)
                    self._sync_task(item)
                    continue
                item.stale_task_id = None
            if item.state == "creating":
                found = self.projects.find_by_data(project_id, "item_key", item.item_key)
                if found:  # imported before a crash, never recorded: adopt it
                    self._opened(item, key, int(found[0]["id"]))
                    self._sync_task(item)
                    continue
            item.state = "creating"
            self.save(item)
            to_import.append((key, item))
        if to_import:
            ids = self.projects.create_tasks(project_id, [i.task_spec() for _, i in to_import], cfg.labels)
            for (key, item), task_id in zip(to_import, ids, strict=True):
                self._opened(item, key, task_id)
        return len(batch)

    def _opened(self, item: ReviewItem, key: str, task_id: int) -> None:
        item.state, item.task_id, item.backlog_key, item.stale_task_id = "open", task_id, None, None
        self.save(item)
        self._del_marker(item.classifier, key)

    def tick(self, cfg: ClassifierConfig) -> None:
        """Periodic upkeep: sync task data left stale by an outage, refill the window."""
        self.sync_dirty(cfg.name)
        self.refill(cfg)
        BACKLOG.labels(cfg.name).set(self.backlog_size(cfg.name))
