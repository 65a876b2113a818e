"""Feedback API on the real app, real S3 (SeaweedFS) and real broker (Tansu): like/dislike events,
idempotency, every bad input with its status and message, batch files with per-row reports."""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from classifier.engine import ServingEngine
from infra.events import ReviewRequest
from infra.http import Services
from infra.predictions import PredictionRecord
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from sift.app import create_app
from tests.bus_helpers import isolated, read_topic

pytestmark = pytest.mark.timeout(180)
LABELS = ["sports", "tech", "politics"]


def build_app(settings: Settings, publisher: EventPublisher) -> FastAPI:
    """The real API app (sift.app); no model is needed for feedback, so the engine resolves none."""
    return create_app(settings, engine=ServingEngine(lambda name: None), publisher=publisher)


@dataclass
class Ctx:
    client: TestClient
    services: Services
    settings: Settings  # with the test's own topic prefix
    publisher: EventPublisher
    name: str
    key: str

    def url(self, suffix: str = "") -> str:
        return f"/v1/classifiers/{self.name}/feedback{suffix}"

    def events(self, expect: int | None = None) -> list[ReviewRequest]:
        assert self.publisher.flush(30), self.publisher.stats()
        return read_topic(self.settings, "review-requests", expect=expect)  # type: ignore[return-value]


@pytest.fixture
def ctx(sift_settings: Settings) -> Iterator[Ctx]:
    settings = isolated(sift_settings)
    publisher = EventPublisher(settings)
    with TestClient(build_app(sift_settings, publisher)) as client:
        services: Services = client.app.state.services  # type: ignore[attr-defined]
        name = f"fb-{uuid.uuid4().hex[:8]}"
        _, key = services.tenants.create(ClassifierConfig(name=name, labels=LABELS, threshold=0.6))
        client.headers["x-api-key"] = key
        yield Ctx(client, services, settings, publisher, name, key)


def _prediction(ctx: Ctx, text: str = "the match went to extra time") -> str:
    store = ctx.services.predictions
    pid = store.record(PredictionRecord(classifier=ctx.name, text=text, label="tech",
                                  confidence=0.41, scores={"sports": 0.39, "tech": 0.41, "politics": 0.2},
                                  model_version="7"))
    store.flush()
    return pid


def test_like_and_dislike_become_review_requests(ctx: Ctx) -> None:
    pid = _prediction(ctx)
    r = ctx.client.post(ctx.url(), json={"prediction_id": pid, "verdict": "dislike", "correct_label": "sports",
                                         "comment": "it is football"})
    assert r.status_code == 202, r.text
    dislike_id = r.json()["event_id"]
    assert r.json()["status"] == "accepted"
    r = ctx.client.post(ctx.url(), json={"text": "new GPU announced", "label": "tech", "verdict": "like"})
    assert r.status_code == 202, r.text

    events = ctx.events(expect=2)
    assert len(events) == 2
    dislike, like = events
    assert dislike.event_id == dislike_id
    assert (dislike.source, dislike.verdict, dislike.suggested_label) == ("user_feedback", "dislike", "sports")
    assert dislike.text == "the match went to extra time" and dislike.predicted_label == "tech"
    assert dislike.confidence == 0.41 and dislike.model_version == "7" and dislike.scores["sports"] == 0.39
    assert dislike.prediction_id == pid and dislike.comment == "it is football"
    assert dislike.classifier == ctx.name
    assert (like.verdict, like.text, like.predicted_label, like.prediction_id) == ("like", "new GPU announced",
                                                                                    "tech", None)


def test_idempotency_key_gives_the_same_event_id(ctx: Ctx) -> None:
    body = {"text": "rates go up", "label": "politics", "verdict": "dislike", "correct_label": "tech"}
    headers = {"Idempotency-Key": "client-retry-1"}
    first = ctx.client.post(ctx.url(), json=body, headers=headers).json()["event_id"]
    second = ctx.client.post(ctx.url(), json=body, headers=headers).json()["event_id"]
    other = ctx.client.post(ctx.url(), json=body, headers={"Idempotency-Key": "client-retry-2"}).json()["event_id"]
    assert first == second != other
    events = ctx.events(expect=3)
    # the broker holds the retry too (at-least-once); the consumer's dedupe by event_id drops it
    # order is not part of the contract (a spooled event may arrive after a later direct one)
    assert sorted(e.event_id for e in events) == sorted([first, first, other])
    assert len({e.event_id for e in events}) == 2


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"prediction_id": "nope", "verdict": "like"}, 404, "unknown prediction 'nope'"),
        ({"text": "x", "label": "cooking", "verdict": "like"}, 422, "label: unknown label 'cooking'"),
        ({"text": "x", "label": "tech", "verdict": "dislike", "correct_label": "Tech"}, 422,
         "correct_label: unknown label 'Tech'"),
        ({"text": "x", "label": "tech", "verdict": "meh"}, 422, "verdict: Input should be 'like' or 'dislike'"),
        ({"text": "x", "label": "tech"}, 422, "verdict: Field required"),
        ({"text": "x", "verdict": "like"}, 422, "send a prediction_id, or the text and the label it got"),
        ({"text": "x", "label": "tech", "verdict": "like", "correct_label": "sports"}, 422, "a 'like' confirms"),
        ({"text": "   ", "label": "tech", "verdict": "like"}, 422, "text is empty"),
        ({"text": "x" * 100_001, "label": "tech", "verdict": "like"}, 413, "the limit is 100000"),
        ({"text": "x", "label": "tech", "verdict": "like", "comment": "c" * 2001}, 422, "comment"),
    ],
)
def test_bad_feedback_is_a_clear_4xx(ctx: Ctx, body: dict, status: int, message: str) -> None:
    r = ctx.client.post(ctx.url(), json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["detail"]


def test_a_bad_label_is_refused_even_with_a_known_prediction(ctx: Ctx) -> None:
    pid = _prediction(ctx)
    r = ctx.client.post(ctx.url(), json={"prediction_id": pid, "label": "cooking", "verdict": "dislike",
                                         "correct_label": "sports"})
    assert r.status_code == 422 and "label: unknown label 'cooking'" in r.json()["detail"], r.text
    assert ctx.events() == []


def test_auth_and_unknown_classifier(ctx: Ctx) -> None:
    body = {"text": "x", "label": "tech", "verdict": "like"}
    assert ctx.client.post(ctx.url(), json=body, headers={"x-api-key": ""}).status_code == 401
    r = ctx.client.post("/v1/classifiers/no-such-one/feedback", json=body)
    assert r.status_code == 404 and "unknown classifier" in r.json()["detail"]
    r = ctx.client.post(ctx.url(), content=b"{nope", headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"] == "malformed JSON body"


def _upload(ctx: Ctx, filename: str, data: bytes, **headers: str):  # noqa: ANN202
    return ctx.client.post(ctx.url("/batch"), files={"file": (filename, io.BytesIO(data))}, headers=headers)


def test_batch_csv_with_bad_rows_gets_a_per_row_report(ctx: Ctx) -> None:
    data = (
        b"text,label,verdict,comment\n"
        b"Goal in the last minute,sports,dislike,was tagged tech\n"
        b",tech,,\n"  # empty text
        b"Parliament votes,cooking,,\n"  # unknown label
        b"New phone,tech,maybe,\n"  # bad verdict
        b"Chip shortage eases,,,\n"  # no label: ask the reviewer
    )
    r = _upload(ctx, "feedback.csv", data)
    assert r.status_code == 202, r.text
    report = r.json()
    assert (report["format"], report["status"]) == ("csv", "done")
    assert (report["rows_total"], report["rows_accepted"], report["rows_rejected"]) == (5, 2, 3)
    assert report["rejected"] == [
        {"row": 2, "reason": "empty text"},
        {"row": 3, "reason": "unknown label 'cooking' (labels: sports, tech, politics)"},
        {"row": 4, "reason": "verdict must be 'like' or 'dislike', not 'maybe'"},
    ]
    events = ctx.events(expect=2)
    assert [(e.text, e.suggested_label, e.verdict, e.source) for e in events] == [
        ("Goal in the last minute", "sports", "dislike", "batch_feedback"),
        ("Chip shortage eases", None, None, "batch_feedback"),
    ]
    # the raw file and the report are stored next to each other
    store = ctx.services.store
    assert report["source_key"].startswith(f"feedback-uploads/{ctx.name}/api/")
    assert store.get_bytes(report["source_key"]) == data
    stored = store.get_json(report["source_key"] + ".report.json")
    assert stored["rows_rejected"] == 3 and stored["rejected"] == report["rejected"]


def test_batch_jsonl_and_comprehend_json(ctx: Ctx) -> None:
    jsonl = b'{"text": "Tesla stock declined 20%", "label": "tech"}\n{"text": "Election tonight"}\nnot json\n'
    r = _upload(ctx, "fb.jsonl", jsonl)
    assert r.status_code == 202, r.text
    assert (r.json()["rows_accepted"], r.json()["rows_rejected"]) == (2, 1)
    assert r.json()["rejected"][0]["reason"].startswith("invalid JSON")

    comprehend = json.dumps({"classifier": ctx.name, "sentences": [
        "Stock market rebounded after the tech sell off", {"text": "Cup final", "label": "sports"}]}).encode()
    r = _upload(ctx, "feedback.json", comprehend)
    assert r.status_code == 202, r.text
    assert (r.json()["format"], r.json()["rows_accepted"]) == ("json", 2)

    # two uploads, two publishes: if one went through the spool (broker ack slow on a loaded machine)
    # the uploads can arrive in either order, so compare by text
    events = {e.text: e for e in ctx.events(expect=4)}
    assert sorted(events) == sorted(["Tesla stock declined 20%", "Election tonight",
                                     "Stock market rebounded after the tech sell off", "Cup final"])
    assert events["Cup final"].suggested_label == "sports"
    assert events["Tesla stock declined 20%"].suggested_label == "tech"
    assert events["Election tonight"].suggested_label is None
    # uploading the same file again yields the same event ids (content-hash based): deduped downstream
    again = _upload(ctx, "feedback.json", comprehend).json()
    assert again["upload_id"] == r.json()["upload_id"]


@pytest.mark.parametrize(
    ("filename", "data", "message"),
    [
        ("fb.json", b'{"classifier": "x", "sentences": ["a", "b"', "for classifier 'x'"),
        ("fb.json", b'{"sentences": ["a", "b"', "truncated JSON after 2 sentences"),
        ("fb.json", b'{"texts": ["a"]}', 'no "sentences" list'),
        ("fb.json", b'[{"text": "a"}]', "top-level JSON array is not supported"),
        ("fb.csv", b"foo,bar,baz\n1,2,3\n", "has no 'text' column"),
        ("fb.csv", b"text\n\xff\xfe bad bytes\n", "not UTF-8"),
        ("fb.jsonl", b"hello\n", "line 1 is not JSON"),
        ("fb.csv", b"", "the uploaded file is empty"),
    ],
)
def test_malformed_file_is_400_with_a_clear_message_and_no_events(ctx: Ctx, filename: str, data: bytes,
                                                                    message: str) -> None:
    r = _upload(ctx, filename, data)
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"]
    assert ctx.events() == []


def test_batch_without_file_is_422(ctx: Ctx) -> None:
    r = ctx.client.post(ctx.url("/batch"), data={"x": "1"})
    assert r.status_code == 422 and "file" in r.json()["detail"]


def test_rejected_list_is_capped_but_every_row_counted(ctx: Ctx) -> None:
    rows = "\n".join(f"text {i},nolabel" if i % 2 else f"text {i},tech" for i in range(1000))
    r = _upload(ctx, "many.csv", ("text,label\n" + rows + "\n").encode())
    report = r.json()
    assert (report["rows_total"], report["rows_accepted"], report["rows_rejected"]) == (1000, 500, 500)
    assert len(report["rejected"]) == 100 and report["rejected_truncated"] is True
    assert len(ctx.events(expect=500)) == 500
