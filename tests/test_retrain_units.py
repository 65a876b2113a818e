"""Pure parts of the retrain stage: cron matching, the blessing gate, validation checks, eval membership."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from infra.tenants import RetrainPolicy
from model.evaluate import scores_from_predictions
from retrain.assemble import AssembledDataset, Conflict, DatasetVersion, split_for_training
from retrain.bless import judge
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


def _report(y_true, y_pred):
    return scores_from_predictions(LABELS, y_true, y_pred)


def test_blessing_gate():
    champ = _report([0, 0, 1, 1], [0, 0, 1, 0])
    better = _report([0, 0, 1, 1], [0, 0, 1, 1])
    policy = RetrainPolicy(promotion_margin=0.05, recall_tolerance=0.0)
    assert judge(better, None, policy)[0] is True
    ok, reason, drops = judge(better, champ, policy)
    assert ok and drops == {"a": 0.0, "b": -0.5}
    ok, reason, _ = judge(better, champ, RetrainPolicy(promotion_margin=0.5))
    assert not ok and "below the promotion margin" in reason
    # better macro-F1 but class a loses recall
    trade = _report([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1])
    base = _report([0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 1, 1])
    ok, reason, _ = judge(trade, base, RetrainPolicy(promotion_margin=0.0, recall_tolerance=0.1))
    assert not ok and "recall drops beyond the tolerance" in reason and "a -0.2500" in reason


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
