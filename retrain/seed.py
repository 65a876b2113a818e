"""The seed dataset of a classifier, kept in the object store so every retrain can rebuild it.

``sift train`` trains on a local file; without a copy in S3 a retrain on another machine (or
after the file is gone) would lose the seed and train on reviewed labels only. Seed files are
immutable and named by fingerprint, so storing the same data twice is a no-op.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

from pydantic import BaseModel

from infra.objectstore import ObjectStore
from retrain import paths
from retrain.dataio import LabeledText, fingerprint, label_counts


class SeedFile(BaseModel):
    key: str
    fingerprint: str
    rows: int
    counts: dict[str, int]
    source: str = ""
    stored_at: datetime


def _to_jsonl(rows: list[LabeledText]) -> bytes:
    return "".join(json.dumps({"text": r.text, "label": r.label}, ensure_ascii=False) + "\n" for r in rows).encode()


def store_seed(store: ObjectStore, classifier: str, rows: list[LabeledText], *, source: str = "") -> SeedFile:
    """Store ``rows`` as ``datasets/<c>/seed/<fingerprint>.jsonl`` and list it in the manifest."""
    fp = fingerprint(rows)
    key = f"{paths.seed_prefix(classifier)}{fp}.jsonl"
    manifest = [SeedFile.model_validate(x) for x in store.get_json(paths.seed_manifest(classifier)) or []]
    for entry in manifest:
        if entry.fingerprint == fp:
            return entry
    if not store.exists(key):
        store.put_bytes(key, _to_jsonl(rows), "application/x-ndjson")
    entry = SeedFile(key=key, fingerprint=fp, rows=len(rows), counts=label_counts(rows), source=source,
                     stored_at=datetime.now(UTC))
    manifest.append(entry)
    store.put_json(paths.seed_manifest(classifier), [m.model_dump(mode="json") for m in manifest])
    return entry


def seed_files(store: ObjectStore, classifier: str) -> list[SeedFile]:
    return [SeedFile.model_validate(x) for x in store.get_json(paths.seed_manifest(classifier)) or []]


def load_seed(store: ObjectStore, classifier: str) -> list[LabeledText]:
    """All seed rows in the order they were stored (later files after earlier ones)."""
    rows: list[LabeledText] = []
    for entry in seed_files(store, classifier):
        data = store.get_bytes(entry.key) or b""
        for line in data.decode("utf-8").splitlines():
            if line.strip():
                rec = json.loads(line)
                rows.append(LabeledText(text=rec["text"], label=rec["label"]))
    return rows
