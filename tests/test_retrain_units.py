"""Pure parts of the retrain stage: cron matching, validation checks, eval membership (the gate:
``test_promotion_gate.py``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.tenants import RetrainPolicy
from infra.texts import text_hash
from retrain.assemble import AssembledDataset, Conflict, DatasetVersion, split_for_training
from retrain.dataio import LabeledText
from retrain.triggers import Cron, CronError, schedule_due
from retrain.validate import validate

LABELS = ["a", "b"]


def test_cron_and_aliases():
    c = Cron.parse("*/15 9-17 * * 1-5")
    assert c.matches(datetime(2024, 6, 3, 9, 30, tzinfo=UTC))  # Monday
    assert not c.matches(datetime(2024, 6, 2, 9, 30, tzinfo=UTC))  # Sunday
    assert Cron.parse("0 0 * * 7").matches(datetime(2024, 6, 2, 0, 0, tzinfo=UTC))  # 7 = Sunday
    now = datetime(2024, 6, 4, 0, 0, 30, tzinfo=UTC)
    assert schedule_due("daily", now - timedelta(minutes=5), now)
    assert not schedule_due("daily", now - timedelta(seconds=10), now)  # this midnight was already checked
    assert not schedule_due("weekly", now - timedelta(days=1), now)  # a Tuesday
    assert not schedule_due("daily", None, now)  # first check only records the time
    for bad in ("every day", "61 * * * *", "* * * *", "*/0 * * * *"):
        with pytest.raises(CronError):
            Cron.parse(bad)


def _ds(train, held, conflicts=()):
    v = DatasetVersion(classifier="x", version_id="v", train_fingerprint="t", eval_fingerprint="e", train_counts={},
                       eval_counts={}, seed_rows=0, reviewed_labels=0, skipped_only=0, relabeled_seed=0,
                       conflicts=len(conflicts), eval_share=0.2, created_at=datetime.now(UTC), train_key="",
                       eval_key="")
    return AssembledDataset(version=v, train=train, eval=held, conflicts=list(conflicts))


def rows(label, n, prefix=""):
    return [LabeledText(text=f"{prefix}{label} text {i}", label=label) for i in range(n)]


def test_validation_checks():
    policy = RetrainPolicy(min_examples_per_label=3)
    good = validate(_ds(rows("a", 3) + rows("b", 3), rows("a", 1, "e") + rows("b", 1, "e")), LABELS, policy)
    assert good.ok and good.summary() == "all checks passed"
    # a seed text with two labels is left out by assemble: a warning, not a stop for every retrain
    conflicted = validate(_ds(rows("a", 3) + rows("b", 3), rows("a", 1, "e") + rows("b", 1, "e"),
                              [Conflict(text="t", labels=["a", "b"])]), LABELS, policy)
    [warning] = [c for c in conflicted.checks if not c.passed]
    assert conflicted.ok and warning.name == "conflicting_labels" and warning.severity == "warning"

    bad = validate(_ds(
        rows("a", 3) + rows("b", 1) + [LabeledText(text="x", label="c"), LabeledText(text="A TEXT 0", label="b")],
        [LabeledText(text="a  text 1", label="a")],
        [Conflict(text="t", labels=["a", "b"])],
    ), LABELS, policy)
    failed = {c.name for c in bad.checks if not c.passed}
    assert not bad.ok
    assert failed >= {"unknown_labels", "too_few_examples", "near_duplicate_conflicts",
                      "train_eval_leakage", "eval_label_coverage"}
    assert "b: 2" in next(c.message for c in bad.checks if c.name == "too_few_examples")
    assert validate(_ds(rows("a", 3) + rows("b", 3), []), LABELS, policy).ok is False  # empty eval set


def test_eval_membership_is_deterministic_and_fixed():
    data = rows("a", 200) + rows("b", 200)
    train, held = split_for_training("clf", data, 0.2)
    assert 40 < len(held) < 120 and len(train) + len(held) == 400
    assert split_for_training("clf", list(reversed(data)), 0.2)[1] == list(reversed(held))
    # near-duplicates land on the same side
    twin = [LabeledText(text=r.text.upper() + "  ", label=r.label) for r in held[:5]]
    assert split_for_training("clf", twin, 0.2)[1] == twin
    # a larger share later keeps every earlier member held out (the set only grows)
    _, held_bigger = split_for_training("clf", data, 0.3)
    assert {r.text for r in held} <= {r.text for r in held_bigger}


def _split(resolved, reviewed, seen, **kw):
    from retrain.assemble import split_rows

    return split_rows("clf", resolved, reviewed, seen, **{"eval_share": 0.2, "eval_min_per_class": 10,
                                                          "min_train": 5, **kw})


def test_eval_set_is_topped_up_per_class_with_reviewed_texts_never_trained_on():
    from retrain.assemble import TRAINED_HASH_CHARS, Membership

    seed = {r.text: r.label for r in rows("a", 100) + rows("rare", 8)}
    review = {r.text: r.label for r in rows("rare", 30, "reviewed ")}
    resolved = {**seed, **review}
    train, held, after = _split(resolved, set(review), Membership())
    held_by = {lb: [r.text for r in held if r.label == lb] for lb in ("a", "rare")}
    train_by = {lb: [r.text for r in train if r.label == lb] for lb in ("a", "rare")}
    assert len(held_by["rare"]) == 10  # 8 seed + 30 reviewed: the 20 % share alone gives it fewer
    assert len(held_by["a"]) >= 10 and all(in_bucket(t) for t in held_by["a"])  # "a" has enough: untouched
    topped = [t for t in held_by["rare"] if t in review and not in_bucket(t)]
    assert topped and all(t in review for t in topped)  # only reviewed texts are moved, never the seed
    assert not set(held_by["rare"]) & set(train_by["rare"]) and len(train) + len(held) == len(resolved)
    assert {text_hash("clf", t)[:TRAINED_HASH_CHARS] for t in train_by["rare"]} <= after.trained

    # the next assembly keeps every member held out and moves no text a model has trained on
    more = {r.text: r.label for r in rows("rare", 10, "later ")}
    _, held2, after2 = _split({**resolved, **more}, set(review) | set(more), after, eval_min_per_class=20)
    held2_texts = {r.text for r in held2}
    assert set(held_by["rare"]) <= held2_texts and after.members <= after2.members
    assert not held2_texts & set(train_by["rare"])
    assert {t for t in held2_texts if t in more} == {t for t in more if t in held2_texts}  # new ones may join
    assert len([r for r in held2 if r.label == "rare"]) > 10


def test_top_up_keeps_enough_training_texts_and_skips_old_membership_files():
    from retrain.assemble import Membership

    review = {r.text: r.label for r in rows("rare", 9, "reviewed ")}
    train, held, _ = _split(review, set(review), Membership(), eval_share=0.0001)
    assert len([r for r in train if r.label == "rare"]) >= 5 and len(held) <= 4
    # a members file from before "trained" was recorded: which reviewed texts were trained on is unknown
    _, held_legacy, after = _split(review, set(review), Membership(known_trained=False), eval_share=0.0001)
    assert held_legacy == [] and after.trained and after.known_trained


def in_bucket(text: str) -> bool:
    from retrain.assemble import in_eval_bucket

    return in_eval_bucket(text_hash("clf", text), 0.2)
