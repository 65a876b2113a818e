"""Low-confidence routing: which classify results become review requests.

Cheap on purpose: it runs inside every classify call, so it does no I/O there (``BudgetRouter``
shares its snapshots from a thread of its own). Publishing
the returned event is the caller's job: classify uses the fire-and-forget ``EventPublisher.publish``
(never blocks on the broker; spooled if the broker is down; lost only if the process is SIGKILLed
before the sender thread hands it on), unlike explicit feedback, which is durable before its 2xx.
"""

from __future__ import annotations

import logging
import math
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable

from infra.events import ReviewRequest, ReviewSource, stable_id
from infra.objectstore import ObjectStore
from infra.routing_stats import RoutingSnapshot, read_snapshots, write_snapshot
from infra.tenants import DEFAULT_THRESHOLD, ClassifierConfig

log = logging.getLogger(__name__)


def uniform(*parts: str) -> float:
    """A uniform draw in [0, 1) fixed by ``parts``: a replayed prediction draws the same again."""
    return int(stable_id(*parts)[:15], 16) / 16**15


def review_request_for(
    cfg: ClassifierConfig,
    text: str,
    label: str,
    confidence: float,
    scores: dict[str, float],
    model_version: str,
    prediction_id: str,
    threshold: float | None = None,
) -> ReviewRequest | None:
    """The review request of one served text, or None.

    ``audit_sample`` with probability ``cfg.review_sample_rate`` whatever the confidence (an
    unbiased sample of the traffic, so it includes doubtful texts too); else ``low_confidence``
    when ``confidence < threshold``. ``threshold``: the one in force (``BudgetRouter.threshold``);
    default the config's fixed one. An audit sample carries a uniform ``audit_rank`` that orders it
    in the review window instead of its margin: ordered by margin, the window would hand reviewers
    the sample's doubtful texts first, which is uncertainty sampling again.

    Event id and draws derive from the prediction id, so a retried publish (spool redelivery, a
    replayed request with the same prediction) routes the same way and is deduped by the review worker.
    """
    if threshold is None:
        threshold = cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLD
    audit = cfg.review_sample_rate > 0 and uniform("audit", cfg.name, prediction_id) < cfg.review_sample_rate
    if not audit and confidence >= threshold:
        return None
    source: ReviewSource = "audit_sample" if audit else "low_confidence"
    return ReviewRequest(
        event_id=stable_id(source, cfg.name, prediction_id),
        classifier=cfg.name,
        text=text,
        predicted_label=label,
        confidence=confidence,
        scores=dict(scores),
        model_version=model_version,
        source=source,
        prediction_id=prediction_id,
        audit_rank=uniform("audit-rank", cfg.name, prediction_id) if audit else None,
    )


DAY_S = 86_400.0


class _Window:
    """A classifier's recent served confidences, (time, confidence), oldest first."""

    def __init__(self, max_samples: int) -> None:
        self.samples: deque[tuple[float, float]] = deque(maxlen=max_samples)
        self.since_compute = 0
        self.threshold: float | None = None  # derived, cached between recomputes


class BudgetRouter:
    """Per-replica routing thresholds that follow a review budget.

    For a classifier with ``review_budget_per_day`` and no fixed threshold, the threshold is the
    ``share`` quantile of the confidences served in the rolling window, where ``share`` =
    budget / traffic per day (this replica's rate over the window plus the other replicas' rates
    from their routing snapshots). Texts below it go to review, so about ``budget`` a day do,
    whatever the model's calibration. Until ``min_samples`` texts were seen the default
    threshold applies. In memory on purpose: a restart re-learns within ``min_samples`` texts.
    """

    def __init__(self, *, window_s: float = 3600.0, max_samples: int = 20_000, min_samples: int = 50,
                 recompute_every: int = 32, clock: Callable[[], float] = time.monotonic) -> None:
        self.window_s, self.max_samples, self.min_samples = window_s, max_samples, min_samples
        self.recompute_every = recompute_every
        self.clock = clock
        self.others_per_day: dict[str, float] = {}  # other replicas' traffic, from their snapshots
        self._windows: dict[str, _Window] = {}
        self._lock = threading.Lock()

    def observe(self, classifier: str, confidence: float) -> None:
        now = self.clock()
        with self._lock:
            w = self._windows.get(classifier)
            if w is None:
                w = self._windows[classifier] = _Window(self.max_samples)
            w.samples.append((now, confidence))
            while w.samples and w.samples[0][0] < now - self.window_s:
                w.samples.popleft()
            w.since_compute += 1

    def texts_per_day(self, classifier: str) -> float:
        """This replica's traffic: texts in the window over the time they span."""
        w = self._windows.get(classifier)
        if w is None or len(w.samples) < 2:
            return 0.0
        span = max(self.clock(), w.samples[-1][0]) - w.samples[0][0]
        return (len(w.samples) - 1) / span * DAY_S if span > 0 else 0.0

    def threshold(self, cfg: ClassifierConfig) -> float:
        """The threshold in force: the fixed one when set, else derived from the budget."""
        if not cfg.budget_routing:
            return cfg.threshold if cfg.threshold is not None else DEFAULT_THRESHOLD
        with self._lock:
            w = self._windows.get(cfg.name)
            if w is None or len(w.samples) < self.min_samples:
                return DEFAULT_THRESHOLD
            if w.threshold is None or w.since_compute >= self.recompute_every:
                w.threshold, w.since_compute = self._derive(cfg, w), 0
            return w.threshold

    def _derive(self, cfg: ClassifierConfig, w: _Window) -> float:
        assert cfg.review_budget_per_day is not None
        traffic = self.texts_per_day(cfg.name) + self.others_per_day.get(cfg.name, 0.0)
        share = cfg.review_budget_per_day / traffic if traffic > 0 else 1.0
        if share >= 1:
            return math.inf  # less traffic than budget: everything goes to review
        confidences = sorted(c for _, c in w.samples)
        return confidences[int(share * len(confidences))]

    def snapshot(self, cfg: ClassifierConfig, replica: str) -> RoutingSnapshot | None:
        """This replica's routing of one classifier, or None when it served none of its texts."""
        with self._lock:
            w = self._windows.get(cfg.name)
            confidences = [c for _, c in w.samples] if w else []
        if not confidences:
            return None
        threshold = self.threshold(cfg)
        per_day = self.texts_per_day(cfg.name)
        below = sum(c < threshold for c in confidences) / len(confidences)
        return RoutingSnapshot(classifier=cfg.name, replica=replica, texts_per_day=round(per_day, 3),
                               routed_per_day=round(per_day * below, 3),
                               threshold=None if math.isinf(threshold) else threshold,
                               derived=cfg.budget_routing, window_texts=len(confidences))

    def share(self, store: ObjectStore, configs: Callable[[str], ClassifierConfig | None], replica: str) -> None:
        """Write this replica's snapshots and read the others' traffic (one pass of the publisher)."""
        for name in list(self._windows):
            cfg = configs(name)
            if cfg is None:
                continue
            snap = self.snapshot(cfg, replica)
            if snap is not None:
                write_snapshot(store, snap)
            others = [s for s in read_snapshots(store, name) if s.replica != replica]
            self.others_per_day[name] = sum(s.texts_per_day for s in others)

    def start_sharing(self, store: ObjectStore, configs: Callable[[str], ClassifierConfig | None],
                      stop: threading.Event, interval_s: float = 30.0) -> threading.Thread:
        """A daemon thread that shares every ``interval_s`` until ``stop`` is set."""
        replica = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"

        def run() -> None:
            while not stop.wait(interval_s):
                try:
                    self.share(store, configs, replica)
                except Exception:
                    log.warning("routing snapshots not shared this pass", exc_info=True)

        thread = threading.Thread(target=run, daemon=True, name="routing-share")
        thread.start()
        return thread
