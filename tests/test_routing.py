"""Low-confidence routing (pure): which classify results become review requests, and their ids."""

from __future__ import annotations

from classifier.routing import review_request_for
from infra.tenants import ClassifierConfig

CFG = ClassifierConfig(name="news", labels=["sports", "tech"], threshold=0.6)
SCORES = {"sports": 0.55, "tech": 0.45}


def test_below_threshold_is_a_low_confidence_review_request() -> None:
    ev = review_request_for(CFG, "close game", "sports", 0.55, SCORES, "3", "pred-1")
    assert ev is not None
    assert (ev.source, ev.classifier, ev.text, ev.predicted_label) == ("low_confidence", "news", "close game", "sports")
    assert (ev.confidence, ev.scores, ev.model_version, ev.prediction_id) == (0.55, SCORES, "3", "pred-1")
    assert ev.verdict is None and ev.suggested_label is None


def test_at_or_above_threshold_is_not_routed() -> None:
    assert review_request_for(CFG, "t", "sports", 0.6, SCORES, "3", "p") is None
    assert review_request_for(CFG, "t", "sports", 0.99, SCORES, "3", "p") is None


def test_event_id_is_stable_per_prediction() -> None:
    a = review_request_for(CFG, "t", "sports", 0.5, SCORES, "3", "pred-1")
    b = review_request_for(CFG, "t", "sports", 0.5, SCORES, "3", "pred-1")
    c = review_request_for(CFG, "t", "sports", 0.5, SCORES, "3", "pred-2")
    other = review_request_for(CFG.model_copy(update={"name": "other"}), "t", "sports", 0.5, SCORES, "3", "pred-1")
    assert a and b and c and other
    assert a.event_id == b.event_id != c.event_id
    assert other.event_id != a.event_id  # tenants never collide


def test_scores_are_copied_not_shared() -> None:
    scores = dict(SCORES)
    ev = review_request_for(CFG, "t", "sports", 0.5, scores, "3", "p")
    scores["sports"] = 0.0
    assert ev is not None and ev.scores["sports"] == 0.55
