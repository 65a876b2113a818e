"""What each API replica's review routing looks like, shared through the object store.

A replica serving classify writes one small snapshot per classifier it served, every
``interval`` seconds: ``routing/<classifier>/<replica>.json``. ``sift review status`` sums the
fresh ones into the projected daily review load, and budget routing reads the other replicas'
traffic so that the budget is shared, not granted once per replica. Stale snapshots (a replica
that stopped) are ignored after ``STALE_S``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pydantic import BaseModel, Field

from infra.objectstore import ObjectStore

STALE_S = 600.0


class RoutingSnapshot(BaseModel):
    classifier: str
    replica: str
    updated_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    texts_per_day: float = Field(description="this replica's classify traffic, texts per day (rolling window)")
    routed_per_day: float = Field(description="review requests per day this replica sends at its current threshold")
    threshold: float | None = Field(description="the threshold in force (None: too little traffic seen yet)")
    derived: bool = Field(description="the threshold follows the review budget")
    window_texts: int = Field(description="confidences in the rolling window")


def _prefix(classifier: str) -> str:
    return f"routing/{classifier}/"


def write_snapshot(store: ObjectStore, snap: RoutingSnapshot) -> None:
    store.put_json(f"{_prefix(snap.classifier)}{snap.replica}.json", snap.model_dump(mode="json"))


def read_snapshots(store: ObjectStore, classifier: str, *, now: datetime | None = None,
                   stale_s: float = STALE_S) -> list[RoutingSnapshot]:
    """The fresh snapshots of every replica that served this classifier recently."""
    now = now or datetime.now(UTC)
    out = []
    for key in store.list_keys(_prefix(classifier)):
        data = store.get_json(key)
        if data is None:
            continue
        snap = RoutingSnapshot.model_validate(data)
        if now - snap.updated_at <= timedelta(seconds=stale_s):
            out.append(snap)
    return out
