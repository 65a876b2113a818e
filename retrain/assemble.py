"""Dataset assembly: seed + reviewed labels -> (train, fixed eval) with a recorded dataset version.

Rules, and why:
- per text, the latest review wins over older reviews and over the seed; a skipped review never
  overrides a label (the reviewer did not know) and skipped-only texts are left out;
- the evaluation set is *fixed* per classifier: a text is held out when the hash of its
  normalised form falls under ``eval_share``, and once held out it stays held out (the member
  hashes are stored), so every version is scored on the same ground and the set only grows with
  its share of new reviews. Hashing the normalised text puts near-duplicates on the same side;
- it is *stratified with a minimum per class*: a class with fewer than ``eval_min_per_class``
  evaluation texts gets reviewed texts that no model was trained on moved in (lowest hash first),
  while its training texts stay at least as many and at least ``min_examples_per_label``; the
  promotion gate needs support per class (``retrain/bless.py``), and the hash share alone gave
  rare classes 0-2 evaluation texts;
- *never trained on*: every text a dataset version trains on is recorded (``trained``, 16-hex hash
  prefixes, beside the members), and such a text never enters the evaluation set, also when
  ``eval_share`` changes later. A members file from before this record exists gets no top-up once
  (which reviewed texts the champion saw is unknown), then records;
- every assembly writes a dataset version (fingerprints, counts per label, its rows) to the
  object store, which runs link to by fingerprint.

The review stage's files are read through ``infra.reviewed`` (the store is the contract between
stages; stages never import each other).
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
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


TRAINED_HASH_CHARS = 16  # 64 bits: a compact record of every trained text, collisions negligible


class Membership(BaseModel):
    """``datasets/<c>/eval/members.json``: the evaluation set and what has been trained on."""

    members: set[str] = Field(default_factory=set)
    trained: set[str] = Field(default_factory=set)
    known_trained: bool = Field(default=True, description="False for a file written before ``trained`` was kept")

    def to_json(self, classifier: str) -> dict:
        return {"classifier": classifier, "members": sorted(self.members), "trained": sorted(self.trained)}


def load_membership(store: ObjectStore, classifier: str) -> Membership:
    data = store.get_json(paths.eval_members(classifier))
    if data is None:
        return Membership()
    return Membership(members=set(data.get("members", [])), trained=set(data.get("trained", [])),
                      known_trained="trained" in data)


def load_members(store: ObjectStore, classifier: str) -> set[str]:
    return load_membership(store, classifier).members


def split_rows(classifier: str, resolved: dict[str, str], reviewed: set[str], seen: Membership, *,
               eval_share: float, eval_min_per_class: int, min_train: int) -> tuple[list[LabeledText],
                                                                                   list[LabeledText], Membership]:
    """(train, eval, membership after this split) of ``resolved`` (text -> label) by the module's rules.

    ``reviewed``: texts that only reviews brought (seed texts trained the first model: never topped up)."""
    after = Membership(members=set(seen.members), trained=set(seen.trained))
    hashes = {text: text_hash(classifier, text) for text in resolved}
    twins = Counter(hashes.values())  # texts equal up to case and spacing move together or not at all
    held: dict[str, list[str]] = {}
    train: dict[str, list[str]] = {}
    for text, label in resolved.items():
        h = hashes[text]
        to_eval = h in seen.members or (h[:TRAINED_HASH_CHARS] not in seen.trained and in_eval_bucket(h, eval_share))
        (held if to_eval else train).setdefault(label, []).append(text)
    if seen.known_trained and eval_min_per_class:
        for label in sorted(set(held) | set(train)):
            have, pool = held.setdefault(label, []), train.get(label, [])
            fresh = sorted((t for t in pool if t in reviewed and twins[hashes[t]] == 1
                            and hashes[t][:TRAINED_HASH_CHARS] not in seen.trained), key=lambda t: hashes[t])
            for text in fresh:
                if len(have) >= eval_min_per_class or len(pool) - 1 < max(len(have) + 1, min_train):
                    break
                pool.remove(text)
                have.append(text)
    held_rows = sorted((LabeledText(text=t, label=lb) for lb, ts in held.items() for t in ts), key=lambda r: r.text)
    train_rows = sorted((LabeledText(text=t, label=lb) for lb, ts in train.items() for t in ts), key=lambda r: r.text)
    after.members |= {hashes[r.text] for r in held_rows}
    after.trained |= {hashes[r.text][:TRAINED_HASH_CHARS] for r in train_rows}
    return train_rows, held_rows, after


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

    seen = load_membership(store, c)
    for text in conflicted:
        resolved.pop(text, None)
    train, held, after = split_rows(c, resolved, {rec.text for rec in reviewed} - seed_texts, seen,
                                    eval_share=cfg.retrain.eval_share,
                                    eval_min_per_class=cfg.retrain.eval_min_per_class,
                                    min_train=cfg.retrain.min_examples_per_label)

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
        if after.members != seen.members or after.trained != seen.trained or not seen.known_trained:
            store.put_json(paths.eval_members(c), after.to_json(c))
        if not store.exists(prefix + "version.json"):
            store.put_bytes(version.train_key, _jsonl(train), "application/x-ndjson")
            store.put_bytes(version.eval_key, _jsonl(held), "application/x-ndjson")
            store.put_json(prefix + "version.json", version.model_dump(mode="json"))
    return AssembledDataset(version=version, train=train, eval=held, conflicts=conflicts)


def load_dataset_version(store: ObjectStore, classifier: str, version_id: str) -> DatasetVersion | None:
    data = store.get_json(paths.dataset_version_prefix(classifier, version_id) + "version.json")
    return None if data is None else DatasetVersion.model_validate(data)
