"""What makes a dead letter replayable, and how its reason is read (no server)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ops.deadletters import DeadLetterEntry, DeadLetters, NotReplayable, reason_of


def _entry(payload: str, topic: str = "sift.review-requests") -> DeadLetterEntry:
    return DeadLetterEntry(id="0-1", partition=0, offset=1, classifier="c", original_topic=topic, reason="x",
                           error="x", event_id=None, first_seen=datetime.now(UTC), payload=payload)


def test_reason_is_the_errors_kind() -> None:
    assert reason_of("permanent: unknown classifier 'x'") == "permanent"
    assert reason_of("failed 5 times: ValueError: boom") == "failed"
    assert reason_of("too-large: 2000000 bytes") == "too-large"
    assert reason_of("") == "unknown"


def test_a_cut_payload_or_an_unknown_topic_is_refused_before_anything_is_sent() -> None:
    assert _entry('{"event_id": "e1"}').why_not_replayable() is None
    assert "was cut" in (_entry('{"event_id": "e1", "text": "aaa').why_not_replayable() or "")
    assert "no original topic" in (_entry("{}", topic="unknown").why_not_replayable() or "")
    dlq = DeadLetters.__new__(DeadLetters)  # replay must refuse before it opens a producer
    with pytest.raises(NotReplayable):
        dlq.replay([_entry('{"a": 1}'), _entry('{"cut')])
