"""Dataset assembly: seed + reviewed labels -> (train, fixed eval) with a recorded dataset version.

Rules, and why:
- per text, the latest review wins over older reviews and over the seed; a skipped review never
  overrides a label (the reviewer did not know) and skipped-only texts are left out;
- the evaluation set is *fixed* per classifier: a text is held out when the hash of its
  normalised form falls under ``eval_share``, and once held out it stays held out (the member
  hashes are stored), so every version is scored on the same ground and the set only grows with
  its share of new reviews. Hashing the normalised text puts near-duplicates on the same side;
- every assembly writes a dataset version (fingerprints, counts per label, its rows) to the
  object store, which runs link to by fingerprint.

The review stage's files are read through ``infra.reviewed`` (the store is the contract between
stages; stages never import each other).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import UTC, datetime

from pydantic import BaseModel, Field

from infra.events import ReviewedLabel
from infra.objectstore import ObjectStore
from infra.reviewed import load_reviewed
from infra.tenants import ClassifierConfig
from infra.texts import text_hash
from retrain import paths
from retrain.dataio import LabeledText, fingerprint, label_counts
from retrain.seed import load_seed


def in_eval_bucket(h: str, share: float) -> bool:
    return int(h[:8], 16) / 0x1_0000_0000 < share


def split_for_training(classifier: str, rows: Iterable[LabeledText], eval_share: float,
                       members: set[str] | None = None) -> tuple[list[LabeledText], list[LabeledText]]:
    """(train, eval) by the same hash rule the retrain stage uses.

    ``sift train`` should train its first model on the train part only: otherwise the champion has
    seen the evaluation texts and every challenger is compared against an inflated score.
    """
    train, held = [], []
    for r in rows:
        h = text_hash(classifier, r.text)
        (held if (members is not None and h in members) or in_eval_bucket(h, eval_share) else train).append(r)
    return train, held


# ---- reviewed labels (the review stage's immutable JSONL files) ---------------------------------

def read_reviewed(store: ObjectStore, classifier: str) -> tuple[list[ReviewedLabel], int]:
    """(latest labelled review per text, number of texts that were only ever skipped)."""
    records = load_reviewed(store, classifier, include_skipped=True)
    labelled = [r for r in records if not r.skipped and r.label is not None]
    return labelled, len(records) - len(labelled)


# ---- assembly -------------------------------------------------------------------------------------

class Conflict(BaseModel):
    text: str
    labels: list[str]


class DatasetVersion(BaseModel):
    """What a run trained and was scored on; stored at ``datasets/<c>/versions/<id>/version.json``."""

    classifier: str
    version_id: str = Field(description="short id from both fingerprints")
    train_fingerprint: str
    eval_fingerprint: str
    train_counts: dict[str, int]
    eval_counts: dict[str, int]
    seed_rows: int
    reviewed_labels: int
    skipped_only: int
    relabeled_seed: int = Field(description="seed texts whose label a review replaced")
    conflicts: int
    eval_share: float
    created_at: datetime
    train_key: str
    eval_key: str

    @property
    def prefix(self) -> str:
        return paths.dataset_version_prefix(self.classifier, self.version_id)


class AssembledDataset(BaseModel):
    version: DatasetVersion
    train: list[LabeledText]
    eval: list[LabeledText]
    conflicts: list[Conflict] = Field(default_factory=list)


def _jsonl(rows: list[LabeledText]) -> bytes:
    return "".join(json.dumps({"text": r.text, "label": r.label}, ensure_ascii=False) + "\n" for r in rows).encode()


def load_members(store: ObjectStore, classifier: str) -> set[str]:
    return set((store.get_json(paths.eval_members(classifier)) or {}).get("members", []))


def assemble(store: ObjectStore, cfg: ClassifierConfig, *, save: bool = True) -> AssembledDataset:
    """Build the training and evaluation rows of ``cfg`` from the stores (see the module rules)."""
    c = cfg.name
    seed = load_seed(store, c)
    seed_labels: dict[str, set[str]] = {}
    resolved: dict[str, str] = {}
    for r in seed:  # later seed files win for the same text; distinct labels are a conflict
        seed_labels.setdefault(r.text, set()).add(r.label)
        resolved[r.text] = r.label
    reviewed, skipped_only = read_reviewed(store, c)
    relabeled = 0
    seed_texts = set(seed_labels)
    for rec in reviewed:
        assert rec.label is not None
        if rec.text in seed_texts and resolved.get(rec.text) != rec.label:
            relabeled += 1
        resolved[rec.text] = rec.label
        seed_labels.pop(rec.text, None)  # a review settles any seed conflict
    conflicts = [Conflict(text=t, labels=sorted(ls)) for t, ls in seed_labels.items() if len(ls) > 1]
    conflicted = {x.text for x in conflicts}

    members = load_members(store, c)
    before = len(members)
    train: list[LabeledText] = []
    held: list[LabeledText] = []
    for text, label in resolved.items():
        if text in conflicted:
            continue
        h = text_hash(c, text)
        if h in members or in_eval_bucket(h, cfg.retrain.eval_share):
            members.add(h)
            held.append(LabeledText(text=text, label=label))
        else:
            train.append(LabeledText(text=text, label=label))
    train.sort(key=lambda r: r.text)
    held.sort(key=lambda r: r.text)

    train_fp, eval_fp = fingerprint(train), fingerprint(held)
    version_id = hashlib.sha256(f"{train_fp}:{eval_fp}".encode()).hexdigest()[:16]
    prefix = paths.dataset_version_prefix(c, version_id)
    version = DatasetVersion(
        classifier=c, version_id=version_id, train_fingerprint=train_fp, eval_fingerprint=eval_fp,
        train_counts=label_counts(train), eval_counts=label_counts(held), seed_rows=len(seed),
        reviewed_labels=len(reviewed), skipped_only=skipped_only, relabeled_seed=relabeled,
        conflicts=len(conflicts), eval_share=cfg.retrain.eval_share, created_at=datetime.now(UTC),
        train_key=prefix + "train.jsonl", eval_key=prefix + "eval.jsonl",
    )
    if save:
        if len(members) != before:
            store.put_json(paths.eval_members(c), {"classifier": c, "members": sorted(members)})
        if not store.exists(prefix + "version.json"):
            store.put_bytes(version.train_key, _jsonl(train), "application/x-ndjson")
            store.put_bytes(version.eval_key, _jsonl(held), "application/x-ndjson")
            store.put_json(prefix + "version.json", version.model_dump(mode="json"))
    return AssembledDataset(version=version, train=train, eval=held, conflicts=conflicts)


def load_dataset_version(store: ObjectStore, classifier: str, version_id: str) -> DatasetVersion | None:
    data = store.get_json(paths.dataset_version_prefix(classifier, version_id) + "version.json")
    return None if data is None else DatasetVersion.model_validate(data)
