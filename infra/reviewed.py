"""The reviewed dataset: the contract between the review stage (writes it) and retrain (reads it).

One immutable JSONL file per finished review at ``datasets/<c>/reviewed/<reviewed-at>-<event-id>.jsonl``,
so writers never overwrite each other and a repeated write is a harmless duplicate. Reading it has
one rule, here: duplicates (same event id) collapse; per text the latest ``reviewed_at`` wins; a
skipped review never overrides a label.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

from infra.events import ReviewedLabel
from infra.objectstore import ObjectStore


def reviewed_prefix(classifier: str) -> str:
    return f"datasets/{classifier}/reviewed/"


def write_reviewed(store: ObjectStore, event: ReviewedLabel) -> str:
    """Append one review (its own object); returns the key."""
    stamp = event.reviewed_at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    key = f"{reviewed_prefix(event.classifier)}{stamp}-{event.event_id}.jsonl"
    store.put_bytes(key, event.to_bytes() + b"\n", "application/x-ndjson")
    return key


def _read_file(store: ObjectStore, key: str) -> list[ReviewedLabel]:
    data = store.get_bytes(key) or b""
    return [ReviewedLabel.model_validate_json(line) for line in data.splitlines() if line.strip()]


def load_reviewed(store: ObjectStore, classifier: str, *, include_skipped: bool = False,
                  workers: int = 16) -> list[ReviewedLabel]:
    """The latest review of each text, oldest first. With ``include_skipped`` a text that was only
    ever skipped comes back as its skipped record (label None)."""
    keys = sorted(store.list_keys(reviewed_prefix(classifier)))
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys) or 1))) as pool:
        chunks = list(pool.map(lambda k: _read_file(store, k), keys))
    seen: set[str] = set()
    labelled: dict[str, ReviewedLabel] = {}
    skipped: dict[str, ReviewedLabel] = {}
    for records in chunks:
        for rec in records:
            if rec.event_id in seen:
                continue
            seen.add(rec.event_id)
            target = skipped if rec.skipped or rec.label is None else labelled
            prev = target.get(rec.text)
            if prev is None or rec.reviewed_at >= prev.reviewed_at:
                target[rec.text] = rec
    out = list(labelled.values())
    if include_skipped:
        out += [r for text, r in skipped.items() if text not in labelled]
    return sorted(out, key=lambda r: r.reviewed_at)
