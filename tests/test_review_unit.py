"""Review-stage rules that need no services: priority order, merging, label config, dataset reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from xml.etree import ElementTree

from infra.events import ReviewedLabel, ReviewRequest
from infra.reviewed import load_reviewed
from review.labelstudio import label_config, parse_annotation
from review.queue import ReviewItem, margin_of, marker_priority, tier_of


def req(text: str = "t", **kw) -> ReviewRequest:  # noqa: ANN003
    base = dict(classifier="news", text=text, predicted_label="tech", confidence=0.5,
                scores={"tech": 0.5, "sports": 0.3, "politics": 0.2}, source="low_confidence")
    base.update(kw)
    return ReviewRequest(**base)


def test_priority_order_user_errors_then_margin_then_age() -> None:
    t0 = datetime(2030, 1, 1, tzinfo=UTC)
    confident_dispute = ReviewItem.new(req("a", source="user_feedback", verdict="dislike", confidence=0.99,
                                           scores={"tech": 0.99, "sports": 0.01}, created_at=t0))
    like = ReviewItem.new(req("b", source="user_feedback", verdict="like", created_at=t0))
    tight = ReviewItem.new(req("c", scores={"tech": 0.41, "sports": 0.40}, created_at=t0))
    loose = ReviewItem.new(req("d", scores={"tech": 0.8, "sports": 0.1}, created_at=t0))
    tight_later = ReviewItem.new(req("e", scores={"tech": 0.41, "sports": 0.40}, created_at=t0 + timedelta(1)))
    order = sorted([loose, tight_later, like, tight, confident_dispute], key=lambda i: i.marker())
    assert [i.text for i in order] == ["a", "b", "c", "e", "d"]
    # the marker carries the priority: the window bounds displacement by it before loading items
    for item in order:
        assert marker_priority(item.marker()) == item.priority
    assert [marker_priority(i.marker()) for i in order] == sorted((i.priority for i in order), reverse=True)
    assert [i.priority for i in order] == sorted((i.priority for i in order), reverse=True)


def test_margin_and_tier() -> None:
    assert margin_of(req(scores={"a": 0.6, "b": 0.35, "c": 0.05})) == 0.25
    assert margin_of(req(scores={}, confidence=0.7)) == 0.7
    assert margin_of(req(scores={}, confidence=None)) == 1.0
    assert tier_of(req(source="batch_feedback", suggested_label="sports")) == 0
    assert tier_of(req(source="batch_feedback", suggested_label="tech")) == 1
    assert tier_of(req()) == 2


def test_merge_counts_and_keeps_the_most_urgent() -> None:
    item = ReviewItem.new(req(scores={"tech": 0.9, "sports": 0.1}))
    item.merge(req(source="user_feedback", verdict="dislike", comment="wrong", suggested_label="sports"))
    assert item.request_count == 2 and len(item.event_ids) == 2
    assert item.tier == 0 and item.origin == "user_feedback" and item.margin == 0.2
    assert item.comment == "wrong" and item.suggested_label == "sports"
    data = item.task_data()
    assert "source" not in data and data["origin"] == "user_feedback" and data["request_count"] == 2


def test_label_config_escapes_labels_and_is_valid_xml() -> None:
    root = ElementTree.fromstring(label_config(["a&b", "c-d", "e.f"]))
    assert [c.get("value") for c in root.iter("Choice")] == ["a&b", "c-d", "e.f"]


def test_parse_annotation_from_webhook_and_api_shapes() -> None:
    task = {"id": 7, "project": 3, "data": {"text": "x"}}
    changed = {"id": 1, "result": [{"from_name": "label", "to_name": "text", "type": "choices",
                                    "origin": "prediction-changed", "value": {"choices": ["sports"]}}],
               "was_cancelled": False, "completed_by": 4, "updated_at": "2030-01-01T00:00:00.5Z"}
    ann = parse_annotation(task, changed)
    assert (ann.label, ann.skipped, ann.prediction_changed, ann.reviewer_id) == ("sports", False, True, 4)
    skipped = parse_annotation(task, {"id": 2, "result": [], "was_cancelled": True,
                                      "completed_by": {"id": 4, "email": "r@x"}})
    assert skipped.skipped and skipped.label is None and skipped.reviewer == "r@x"


class FakeStore:
    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files

    def list_keys(self, prefix: str):  # noqa: ANN201
        return iter(sorted(k for k in self.files if k.startswith(prefix)))

    def get_bytes(self, key: str) -> bytes | None:
        return self.files.get(key)


def test_load_reviewed_latest_wins_duplicates_collapse_skips_never_override() -> None:
    t = datetime(2030, 1, 1, tzinfo=UTC)

    def rec(eid: str, text: str, label: str | None, minutes: int) -> bytes:
        return ReviewedLabel(event_id=eid, classifier="news", text=text, label=label, skipped=label is None,
                             reviewed_at=t + timedelta(minutes=minutes)).to_bytes() + b"\n"

    p = "datasets/news/reviewed/"
    store = FakeStore({
        f"{p}1.jsonl": rec("e1", "a", "sports", 1),
        f"{p}2.jsonl": rec("e2", "a", "politics", 5),
        f"{p}3.jsonl": rec("e2", "a", "politics", 5),  # the same review written twice
        f"{p}4.jsonl": rec("e3", "a", None, 9),  # a later skip does not erase the label
        f"{p}5.jsonl": rec("e4", "b", None, 2),
    })
    got = load_reviewed(store, "news")  # type: ignore[arg-type]
    assert [(r.text, r.label) for r in got] == [("a", "politics")]
    with_skips = load_reviewed(store, "news", include_skipped=True)  # type: ignore[arg-type]
    assert {(r.text, r.skipped) for r in with_skips} == {("a", False), ("b", True)}


def test_an_audit_sample_is_ordered_by_its_random_rank_not_its_margin() -> None:
    doubtful = req("a", source="audit_sample", audit_rank=0.9, scores={"x": 0.5, "y": 0.49})
    sure = req("b", source="audit_sample", audit_rank=0.1, scores={"x": 0.99, "y": 0.01})
    assert margin_of(doubtful) == 0.9 and margin_of(sure) == 0.1
    a, b = ReviewItem.new(doubtful), ReviewItem.new(sure)
    assert (a.tier, b.tier) == (2, 2) and b.priority > a.priority  # the sure one drew the better rank
    assert sorted([a.marker(), b.marker()])[0] == b.marker()  # the backlog listing agrees
    assert a.task_data()["origin"] == "audit_sample" and "random audit sample" in a.task_data()["context"]
