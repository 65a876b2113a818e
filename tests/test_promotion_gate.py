"""The promotion gate on paired predictions (pure: no services, no model): the bootstrap decides what
the evaluation set can tell apart, per-class recall counts only where a class has support."""

from __future__ import annotations

import pytest

from infra.tenants import RetrainPolicy
from model.evaluate import EvalReport, scores_from_predictions
from retrain.bless import bless, judge

LABELS = ["a", "b", "c", "d"]


def paired(spec: dict[str, tuple[int, int, int]]) -> tuple[EvalReport, EvalReport]:
    """(champion, candidate) reports on the same rows. ``spec``: label -> (support, rows the champion
    gets right, rows the candidate gets right); each model gets the first rows of a class right and
    mistakes a row for the next label."""
    truth: list[int] = []
    champ: list[int] = []
    cand: list[int] = []
    for i, label in enumerate(LABELS):
        n, right_champ, right_cand = spec.get(label, (0, 0, 0))
        wrong = (i + 1) % len(LABELS)
        for row in range(n):
            truth.append(i)
            champ.append(i if row < right_champ else wrong)
            cand.append(i if row < right_cand else wrong)
    return scores_from_predictions(LABELS, truth, champ), scores_from_predictions(LABELS, truth, cand)


def test_better_overall_with_one_noisy_small_class_is_promoted():
    champion, candidate = paired({"a": (60, 42, 54), "b": (60, 42, 54), "c": (60, 42, 54), "d": (5, 5, 3)})
    ok, reason, g = judge(candidate, champion, RetrainPolicy())
    assert ok, reason
    assert g.reference == "champion" and g.n == 185 and g.resamples == 1000
    assert g.gain == pytest.approx(candidate.macro_f1 - champion.macro_f1, abs=1e-6) and g.gain > 0.1
    assert 0 < g.gain_interval[0] < g.gain < g.gain_interval[1]
    d = g.per_class["d"]  # -0.40 recall on 5 texts: what the old per-class rule refused
    assert d.support == 5 and d.drop == pytest.approx(0.4) and not d.counted and not d.significant
    assert "no significant recall drop on the 3 classes with >= 20 evaluation texts" in reason


def test_truly_worse_on_a_well_supported_class_is_refused():
    champion, candidate = paired({"a": (60, 48, 60), "b": (60, 48, 60), "c": (60, 48, 60), "d": (60, 48, 33)})
    ok, reason, g = judge(candidate, champion, RetrainPolicy())
    assert not ok
    assert g.gain > 0, "better on average: the class regression alone refuses it"
    d = g.per_class["d"]
    assert d.counted and d.significant and d.drop == pytest.approx(0.25) and d.drop_interval[0] > 0
    assert g.rule == "significant recall drop on a class with min_class_support"
    assert "significant recall drops beyond 0.0500: d -0.2500 (support 60" in reason
    assert [k for k, c in g.per_class.items() if c.significant] == ["d"]


def test_a_gain_the_evaluation_set_cannot_resolve_is_refused():
    champion, candidate = paired({"a": (4, 3, 4), "b": (4, 3, 3), "c": (4, 4, 3), "d": (4, 3, 4)})
    ok, reason, g = judge(candidate, champion, RetrainPolicy())
    assert not ok and g.gain > 0 and g.gain_interval[0] < -0.02
    assert "may be more than 0.0200 worse than the champion" in reason
    assert judge(candidate, champion, RetrainPolicy(max_f1_loss=1.0))[0]  # knob: accept any plausible loss


def test_the_margin_still_applies_to_the_observed_gain():
    champion, candidate = paired({"a": (60, 42, 54), "b": (60, 42, 54), "c": (60, 42, 54), "d": (60, 42, 54)})
    ok, reason, g = judge(candidate, champion, RetrainPolicy(promotion_margin=0.5))
    assert not ok and "is below the promotion margin 0.5000" in reason and g.rule == "gain below promotion_margin"


def test_first_model_must_beat_the_majority_baseline_by_the_floor():
    _, good = paired({"a": (40, 0, 36), "b": (20, 0, 17), "c": (20, 0, 18), "d": (20, 0, 16)})
    ok, reason, g = judge(good, None, RetrainPolicy())
    assert ok, reason
    assert g.reference == "majority_baseline" and g.gain_interval[0] > 0.05
    assert g.reference_macro_f1 == pytest.approx(2 * 40 / 140 / 4)  # "a" for every row: F1 of a, over 4 classes
    majority = scores_from_predictions(LABELS, good.y_true, [0] * len(good.y_true))
    ok, reason, g = judge(majority, None, RetrainPolicy())
    assert not ok and g.gain == 0 and "below the baseline floor 0.0500" in reason
    barely = scores_from_predictions(LABELS, good.y_true, [0] * 98 + [3, 3])  # two of "d" right at the end
    ok, reason, g = judge(barely, None, RetrainPolicy())
    assert not ok and 0 < g.gain < 0.05


def test_the_verdict_records_the_numbers_and_the_bootstrap_is_reproducible():
    champion, candidate = paired({"a": (30, 20, 27), "b": (30, 24, 25), "c": (30, 25, 24), "d": (30, 21, 26)})
    v = bless("clf", "7", candidate, "6", champion, RetrainPolicy(), dataset_version="ds", job_id="j")
    again = bless("clf", "7", candidate, "6", champion, RetrainPolicy())
    assert v.gate is not None and again.gate is not None and v.gate.gain_interval == again.gate.gain_interval
    assert v.gate.rule and v.recall_drops == {k: c.drop for k, c in v.gate.per_class.items()}
    assert set(v.gate.per_class) == set(LABELS) and all(c.support == 30 for c in v.gate.per_class.values())
    stored = v.model_dump(mode="json")
    assert stored["gate"]["gain_interval"] == list(v.gate.gain_interval)
    other_seed = judge(candidate, champion, RetrainPolicy(bootstrap_seed=1))[2]
    assert other_seed.gain == v.gate.gain and other_seed.gain_interval != v.gate.gain_interval
