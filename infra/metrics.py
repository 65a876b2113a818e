"""Pipeline metrics every process may export: the bus and the spool live in infra, so do theirs.

Stage-specific metrics stay with their stage (``classifier/metrics.py``, ``retrain/alerts.py``,
``review/metrics.py``); every process serves whatever it registered on its own ``/metrics``.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

DEAD_LETTERS = Counter("sift_dead_letters_total", "records sent to the dead-letter topic, by original topic and reason",
                       ["topic", "reason"])
CONSUMER_LAG = Gauge("sift_consumer_lag", "records between a consumer's position and the partition's high watermark",
                     ["group", "topic", "partition"])
SPOOL_EVENTS = Gauge("sift_spool_events", "events in this host's local spool, waiting for the broker")
SPOOL_OLDEST_AGE = Gauge("sift_spool_oldest_age_seconds", "how long the oldest spooled event has waited (0 if none)")


def dead_letter_reason(error: str) -> str:
    """The kind of a dead letter's error (``permanent``, ``failed``, ``too-large``...): a bounded label set."""
    head = error.split(":", 1)[0].strip()
    return "failed" if head.startswith("failed ") else head or "unknown"


def count_dead_letter(topic: str, error: str) -> None:
    DEAD_LETTERS.labels(topic=topic, reason=dead_letter_reason(error)).inc()


def export_lag(consumer: object) -> None:
    """Set the lag gauge from a consumer's own view after a poll (no broker round trip)."""
    group = getattr(consumer, "config", {}).get("group_id") or "none"
    for tp in consumer.assignment():  # type: ignore[attr-defined]
        highwater = consumer.highwater(tp)  # type: ignore[attr-defined]
        if highwater is None:
            continue
        try:
            position = consumer.position(tp)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - a partition being revoked has no position; skip it this round
            continue
        CONSUMER_LAG.labels(group=group, topic=tp.topic, partition=str(tp.partition)).set(max(0, highwater - position))


def watch_spool(spool: object) -> None:
    """Read the spool's depth and age at scrape time; a closed spool reads as NaN, never a failed scrape."""
    def read(fn: Callable[[], float]) -> Callable[[], float]:
        def safe() -> float:
            try:
                return float(fn())
            except Exception:  # noqa: BLE001
                return float("nan")
        return safe

    SPOOL_EVENTS.set_function(read(lambda: len(spool)))  # type: ignore[arg-type]
    SPOOL_OLDEST_AGE.set_function(read(lambda: spool.oldest_age_s() or 0.0))  # type: ignore[attr-defined]
