"""Review stage against a real Label Studio, a real broker (Tansu) and real S3 (SeaweedFS).

Label Studio's webhooks really travel to the review router served on loopback.
"""

from __future__ import annotations

import json

import httpx
import pytest
from typer.testing import CliRunner

from infra.events import ReviewedLabel
from review import cli as review_cli
from review.collector import reconcile
from review.labelstudio import WEBHOOK_PATH, WEBHOOK_SECRET_HEADER, ReviewProjects, choice_result
from tests.bus_helpers import wait_until
from tests.review_fixtures import ReviewEnv, WorkerThread, review_env_fixture  # noqa: F401

pytestmark = [pytest.mark.labelstudio, pytest.mark.timeout(400)]


def test_request_becomes_exactly_one_task_with_preannotation(review_env: ReviewEnv) -> None:
    env = review_env
    worker = WorkerThread(env.settings).start()
    try:
        req = env.request("The new GPU doubles inference throughput", comment=None)
        env.publish(req)
        tasks = env.wait_tasks(1)
    finally:
        worker.halt()
    assert len(tasks) == 1
    task = tasks[0]
    data = task["data"]
    assert data["text"] == req.text
    assert "source" not in data  # $source would render the whole task JSON
    assert data["origin"] == "low_confidence"
    assert data["predicted_label"] == "tech" and data["request_count"] == 1
    assert data["classifier"] == env.name and data["priority"] > 0
    assert "tech" in data["guess"] and "41%" in data["guess"]
    [prediction] = task["predictions"]
    assert prediction["model_version"] == "3"
    assert prediction["score"] == pytest.approx(0.41)
    assert prediction["result"][0]["value"]["choices"] == ["tech"]
    assert task["total_annotations"] == 0


def test_duplicate_raises_request_count_instead_of_second_task(review_env: ReviewEnv) -> None:
    env = review_env
    worker = WorkerThread(env.settings).start()
    try:
        first = env.request("Parliament votes on the budget tonight", predicted_label="sports", confidence=0.5)
        env.publish(first)
        env.wait_tasks(1)
        again = env.request("Parliament votes on the budget tonight", source="user_feedback", verdict="dislike",
                            suggested_label="politics", comment="this is clearly politics")
        env.publish(again, first)  # a new request for the same text, and a redelivered event
        # handled all three: the redelivered event had its chance to count
        tasks = env.wait_tasks(1)
    finally:
        worker.halt()
    assert len(tasks) == 1
    data = tasks[0]["data"]
    assert data["request_count"] == 2
    assert data["origin"] == "user_feedback"  # the more urgent reason wins
    assert data["comment"] == "this is clearly politics"
    assert data["suggested_label"] == "politics"


def test_priority_user_errors_first_then_smallest_margin_within_window(review_env: ReviewEnv) -> None:
    """Requests that arrive while Label Studio is unreachable wait in the durable backlog; the
    window is then filled in priority order and never beyond its size."""
    env = review_env
    cfg = env.api.services.tenants.require(env.name)
    cfg.review_window = 3
    env.api.services.tenants.save(cfg)
    down = ReviewProjects("http://127.0.0.1:9", "x", timeout=2)
    queue_down = type(env.queue())(env.settings, env.store, env.api.services.tenants, down)
    margins = {"wide margin": (0.9, 0.05), "tiny margin": (0.40, 0.39), "mid margin": (0.6, 0.3)}
    for text, (top, second) in margins.items():
        queue_down.submit(env.request(text, confidence=top, scores={"tech": top, "sports": second}))
    queue_down.submit(env.request("user says wrong", source="user_feedback", verdict="dislike", confidence=0.95,
                                  scores={"tech": 0.95, "sports": 0.03}))
    assert env.queue().backlog_size(env.name) == 4 and env.tasks() == []

    created = env.queue().refill(env.api.services.tenants.require(env.name))
    assert created == 3
    order = [t["data"]["text"] for t in sorted(env.tasks(), key=lambda t: t["id"])]
    assert order == ["user says wrong", "tiny margin", "mid margin"]
    assert env.queue().backlog_size(env.name) == 1
    # a reviewer answers one task: the next refill moves the last item in
    first = min(env.tasks(), key=lambda t: t["id"])
    env.projects.client.annotations.create(id=first["id"], result=choice_result("sports"))
    assert env.queue().refill(env.api.services.tenants.require(env.name)) == 1
    assert env.queue().backlog_size(env.name) == 0
    assert sorted(t["data"]["text"] for t in env.tasks()) == sorted([*margins, "user says wrong"])


def _answer_two(env: ReviewEnv) -> dict[str, dict]:
    """Two requests become tasks; the reviewer labels one 'sports' and skips the other; both reach
    the dataset through the webhook. Returns the tasks by text."""
    queue = env.queue()
    queue.submit(env.request("Late goal wins the derby", predicted_label="tech", confidence=0.45))
    queue.submit(env.request("Nothing fits this one", predicted_label="tech", confidence=0.3))
    tasks = {t["data"]["text"]: t for t in env.tasks()}
    assert len(tasks) == 2
    client = env.projects.client
    client.annotations.create(id=tasks["Late goal wins the derby"]["id"], result=choice_result("sports"))
    client.annotations.create(id=tasks["Nothing fits this one"]["id"], result=[], was_cancelled=True)
    assert wait_until(lambda: len(env.dataset_keys()) == 2, 20, 0.2), env.dataset_keys()
    return tasks


def test_annotation_arrives_as_event_and_in_dataset_once(review_env: ReviewEnv) -> None:
    env = review_env
    tasks = _answer_two(env)

    events = env.reviewed_events(expect=2)
    assert len(events) == 2
    by_text = {e.text: e for e in events}
    labelled: ReviewedLabel = by_text["Late goal wins the derby"]
    assert labelled.label == "sports" and not labelled.skipped
    assert labelled.predicted_label == "tech" and labelled.source == "low_confidence"
    assert labelled.reviewer == env.ls.username and labelled.review_task_id == tasks[labelled.text]["id"]
    skipped = by_text["Nothing fits this one"]
    assert skipped.skipped and skipped.label is None

    assert [r.label for r in env.reviewed()] == ["sports"]  # skipped is not a label
    assert {r.text: r.skipped for r in env.reviewed(include_skipped=True)} == {
        "Late goal wins the derby": False, "Nothing fits this one": True}

    # reconciliation over the same tasks adds nothing: one record per annotation
    report = reconcile(env.settings, env.name, full=True)
    assert report.recorded == 0 and report.annotations_seen == 2
    assert len(env.dataset_keys()) == 2


def test_a_changed_review_adds_a_record_and_the_latest_wins(review_env: ReviewEnv) -> None:
    env = review_env
    tasks = _answer_two(env)
    client = env.projects.client
    ann_id = client.annotations.list(id=tasks["Late goal wins the derby"]["id"])[0].id
    client.annotations.update(id=ann_id, result=choice_result("politics"))
    assert wait_until(lambda: len(env.dataset_keys()) == 3, 20, 0.2)
    assert [r.label for r in env.reviewed()] == ["politics"]


def test_review_status_by_key_by_admin_and_from_the_cli(review_env: ReviewEnv) -> None:
    env = review_env
    _answer_two(env)
    url = f"{env.api.url}/v1/classifiers/{env.name}/review/status"
    status = httpx.get(url, headers={"x-api-key": env.api_key}).json()  # type: ignore[attr-defined]
    assert status["reviewed"] == 1 and status["skipped"] == 1 and status["pending_tasks"] == 0
    assert status["reviewed_per_label"] == {"sports": 1} and status["agreement"] == 0.0
    assert httpx.get(url, headers={"x-admin-key": env.settings.admin_key}).status_code == 200
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"x-admin-key": "nope"}).status_code == 403

    # the same status from `sift review status NAME` (settings from SIFT_*, as the CLI reads them)
    result = CliRunner().invoke(review_cli.app, ["status", env.name])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["reviewed_per_label"] == {"sports": 1}
    assert CliRunner().invoke(review_cli.app, ["status", "no-such-classifier"]).exit_code == 1


def test_reconciliation_recovers_annotation_whose_webhook_was_lost(review_env: ReviewEnv) -> None:
    env = review_env
    queue = env.queue()
    queue.submit(env.request("Chip maker unveils a new phone"))
    [task] = env.tasks()
    # lose the webhook: Label Studio has no hook for the project while the reviewer answers
    for hook in env.projects.client.webhooks.list(project=str(env.project_id)):
        env.projects.client.webhooks.delete(hook.id)
    assert list(env.projects.client.webhooks.list(project=str(env.project_id))) == []
    env.projects.client.annotations.create(id=task["id"], result=choice_result("tech"))

    report = reconcile(env.settings, env.name)
    assert report.recorded == 1  # not 0: no webhook had recorded it
    [rec] = env.reviewed()
    assert rec.label == "tech" and rec.predicted_label == "tech" and rec.review_task_id == task["id"]
    [event] = env.reviewed_events(expect=1)
    assert event.event_id == rec.event_id
    # incremental and full passes are no-ops now
    assert reconcile(env.settings, env.name).recorded == 0
    assert reconcile(env.settings, env.name, full=True).recorded == 0
    assert len(env.dataset_keys()) == 1


def test_webhook_with_wrong_or_missing_secret_is_refused(review_env: ReviewEnv) -> None:
    env = review_env
    queue = env.queue()
    queue.submit(env.request("Some text to label"))
    [task] = env.tasks()
    forged = {"action": "ANNOTATION_CREATED", "project": {"id": env.project_id},
              "task": {"id": task["id"], "project": env.project_id, "data": task["data"]},
              "annotation": {"id": 999_999, "task": task["id"], "result": choice_result("sports"),
                             "was_cancelled": False, "completed_by": 1,
                             "updated_at": "2030-01-01T00:00:00Z"}}
    url = env.api.url + WEBHOOK_PATH
    assert httpx.post(url, json=forged).status_code == 401
    assert httpx.post(url, json=forged, headers={WEBHOOK_SECRET_HEADER: "wrong"}).status_code == 403
    assert httpx.post(url, json=forged, headers={WEBHOOK_SECRET_HEADER: env.settings.webhook_secret[:-1]}
                      ).status_code == 403
    assert env.dataset_keys() == []
    # the right secret with an action we do not handle is acknowledged, not processed
    ok = httpx.post(url, json={"action": "PROJECT_UPDATED"},
                    headers={WEBHOOK_SECRET_HEADER: env.settings.webhook_secret})
    assert ok.status_code == 200 and ok.json()["accepted"] is False
