"""The ordered review window against a real Label Studio and real S3.

The open tasks are always the K most urgent requests; a better request displaces the least urgent
task nobody started, whose item waits in the backlog and re-opens later; reviewers get the window
best-first from the project's default tab and from the label stream.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from review.labelstudio import (
    QUEUE_VIEW_TITLE,
    LabelStudioUnavailable,
    ReviewProjects,
    choice_result,
    ensure_project,
)
from review.queue import ReviewItem
from tests.review_fixtures import ReviewEnv, review_env_fixture  # noqa: F401

pytestmark = [pytest.mark.labelstudio, pytest.mark.timeout(400)]


def _window(env: ReviewEnv, k: int, near_duplicate_similarity: float = 1.0) -> None:
    tenants = env.api.services.tenants
    cfg = tenants.require(env.name)
    cfg.review_window, cfg.near_duplicate_similarity = k, near_duplicate_similarity
    tenants.save(cfg)


def _submit(env: ReviewEnv, text: str, margin: float, queue: Any = None) -> None:
    """A low-confidence request whose top-2 margin (so its priority, 1 - margin) is known."""
    second = round((1 - margin) / 2, 6)
    (queue or env.queue()).submit(env.request(text, confidence=second + margin,
                                              scores={"tech": second + margin, "sports": second}))


def _open(env: ReviewEnv) -> dict[str, dict[str, Any]]:
    return {t["data"]["text"]: t for t in env.tasks()
            if not t["total_annotations"] and not t["cancelled_annotations"]}


def _item(env: ReviewEnv, text: str) -> ReviewItem:
    from infra.texts import text_hash
    item = env.queue().load(env.name, text_hash(env.name, text))
    assert item is not None
    return item


def _api(env: ReviewEnv, method: str, path: str, **kw: Any) -> httpx.Response:
    headers = {"Authorization": f"Token {env.settings.label_studio_token}"}
    resp = httpx.request(method, env.settings.label_studio_url.rstrip("/") + path, headers=headers, timeout=30, **kw)
    assert resp.status_code < 300, resp.text
    return resp


MARGINS = {"m50": 0.50, "m05": 0.05, "m90": 0.90, "m20": 0.20, "m70": 0.70, "m01": 0.01, "m40": 0.40,
           "m10": 0.10}


def test_open_set_is_the_k_best_and_reviewers_get_it_best_first(review_env: ReviewEnv) -> None:
    env = review_env
    _window(env, 3)
    for text, margin in MARGINS.items():  # each submit refills: arrival order is not priority order
        _submit(env, text, margin)

    best = sorted(MARGINS, key=MARGINS.get)[:3]  # type: ignore[arg-type]
    assert set(_open(env)) == set(best) == {"m01", "m05", "m10"}
    assert len(env.tasks()) == 3  # displaced tasks were deleted, not left behind
    rest = set(MARGINS) - set(best)
    for text in rest:  # everything else waits in the backlog, with its own priority
        item = _item(env, text)
        assert item.state == "backlog" and item.task_id is None and item.stale_task_id is None
        assert item.backlog_key in env.queue().backlog_keys(env.name)
    assert env.queue().backlog_size(env.name) == len(rest)
    for text in best:
        assert _item(env, text).state == "open"
        assert _open(env)[text]["id"] == _item(env, text).task_id

    # the project's first tab is the best-first one, and it lists the window in priority order
    views = _api(env, "GET", "/api/dm/views/", params={"project": env.project_id}).json()
    first = min(views, key=lambda v: (v["order"] or 0, v["id"]))
    assert first["data"]["title"] == QUEUE_VIEW_TITLE
    ensure_project(env.settings, env.api.services.tenants, env.api.services.tenants.require(env.name), env.projects)
    again = _api(env, "GET", "/api/dm/views/", params={"project": env.project_id}).json()
    assert [v["id"] for v in again if v["data"]["title"] == QUEUE_VIEW_TITLE] == [first["id"]]  # idempotent
    listed = _api(env, "GET", "/api/tasks/", params={"project": env.project_id, "view": first["id"],
                                                     "fields": "task_only"}).json()["tasks"]
    assert [t["data"]["text"] for t in listed] == ["m01", "m05", "m10"]
    # the label stream ("Label All Tasks" from that tab) serves the most urgent task first
    nxt = _api(env, "GET", f"/api/projects/{env.project_id}/next", params={"view": first["id"]}).json()
    assert nxt["data"]["text"] == "m01"


def test_a_started_task_stays_and_a_displaced_item_reopens_later(review_env: ReviewEnv) -> None:
    env = review_env
    _window(env, 2)
    _submit(env, "low drafted", 0.80)
    _submit(env, "low untouched", 0.60)
    drafted = _open(env)["low drafted"]
    _api(env, "POST", f"/api/tasks/{drafted['id']}/drafts", json={"result": choice_result("sports"), "lead_time": 1})

    _submit(env, "urgent one", 0.02)
    _submit(env, "urgent two", 0.03)
    # the draft keeps its task although two better requests wait; the untouched one made room
    assert set(_open(env)) == {"low drafted", "urgent one"}
    assert _open(env)["low drafted"]["id"] == drafted["id"]
    displaced = _item(env, "low untouched")
    assert displaced.state == "backlog" and displaced.task_id is None
    assert displaced.backlog_key == displaced.marker() and displaced.priority == pytest.approx(0.4)
    assert set(env.queue().backlog_keys(env.name)) == {displaced.backlog_key, _item(env, "urgent two").backlog_key}

    # a second request for the displaced text merges into its backlog item (nothing lost)
    _submit(env, "low untouched", 0.60)
    assert _item(env, "low untouched").request_count == 2

    # reviewers answer the window; the waiting items re-open best-first, each exactly once
    client = env.projects.client
    client.annotations.create(id=_open(env)["urgent one"]["id"], result=choice_result("tech"))
    client.annotations.create(id=drafted["id"], result=choice_result("sports"))
    cfg = env.api.services.tenants.require(env.name)
    env.queue().refill(cfg)
    assert set(_open(env)) == {"urgent two", "low untouched"}
    back = _open(env)["low untouched"]
    assert back["data"]["request_count"] == 2 and back["data"]["item_key"] == displaced.item_key
    assert env.queue().backlog_size(env.name) == 0
    assert sorted(t["data"]["text"] for t in env.tasks()) == sorted(
        ["low drafted", "urgent one", "urgent two", "low untouched"])


class _DeleteFails(ReviewProjects):
    """Label Studio goes away right between saving a displaced item and deleting its task."""

    def delete_task(self, task_id: int) -> None:
        raise LabelStudioUnavailable("down mid-displacement")


def test_a_displacement_cut_short_never_leaves_two_tasks_for_one_item(review_env: ReviewEnv) -> None:
    env = review_env
    _window(env, 1)
    _submit(env, "plain", 0.70)
    [old] = env.tasks()
    broken = _DeleteFails(env.settings.label_studio_url, env.settings.label_studio_token)
    queue = type(env.queue())(env.settings, env.store, env.api.services.tenants, broken)
    _submit(env, "better", 0.10, queue=queue)  # the refill fails after the item was saved back
    item = _item(env, "plain")
    assert item.state == "backlog" and item.stale_task_id == old["id"]
    assert [t["id"] for t in env.tasks()] == [old["id"]]  # the task outlived its displacement

    cfg = env.api.services.tenants.require(env.name)
    env.queue().refill(cfg)  # the next pass deletes it and opens the better request
    assert set(_open(env)) == {"better"} and len(env.tasks()) == 1
    assert _item(env, "plain").stale_task_id is None and _item(env, "plain").state == "backlog"
    env.projects.client.annotations.create(id=_open(env)["better"]["id"], result=choice_result("tech"))
    env.queue().refill(cfg)
    assert set(_open(env)) == {"plain"}
    assert [t["data"]["text"] for t in env.tasks()].count("plain") == 1


OIL = "Oil prices rose sharply on Monday after OPEC agreed to cut production by two million barrels a day."
EDITS = ["Oil prices rose sharply on Tuesday after OPEC agreed to cut production by two million barrels a day.",
         "Oil prices rose sharply on Monday after OPEC agreed to cut output by two million barrels a day!"]
DISTINCT = ["The central bank left interest rates unchanged and signalled no move before the summer.",
            "A late goal gave the home side the derby and sent them top of the table.",
            "The new phone ships with a faster chip and a brighter screen."]


def test_near_duplicates_do_not_fill_the_window(review_env: ReviewEnv) -> None:
    env = review_env
    _window(env, 6, near_duplicate_similarity=0.6)  # the default; the fixture turns it off
    _submit(env, OIL, 0.10)
    _submit(env, OIL.upper(), 0.10)  # the same text: deduped into the open task
    for i, text in enumerate(EDITS):  # lightly edited copies, each *more* urgent than the original
        _submit(env, text, 0.05 - i * 0.01)
    for i, text in enumerate(DISTINCT):
        _submit(env, text, 0.30 + i * 0.1)
    # a user disputing a copy is not held back: a person is waiting on that answer
    env.queue().submit(env.request(OIL.replace("Monday", "Sunday"), source="user_feedback", verdict="dislike"))

    assert set(_open(env)) == {OIL, *DISTINCT, OIL.replace("Monday", "Sunday")}
    assert _open(env)[OIL]["data"]["request_count"] == 2
    for text in EDITS:  # held in the backlog with their priority, not dropped
        assert _item(env, text).state == "backlog"
    assert env.queue().backlog_size(env.name) == 2

    # once the original is answered, the best copy takes its turn (one of them, not both)
    env.projects.client.annotations.create(id=_open(env)[OIL]["id"], result=choice_result("tech"))
    env.projects.client.annotations.create(id=_open(env)[OIL.replace("Monday", "Sunday")]["id"],
                                           result=choice_result("tech"))
    env.queue().refill(env.api.services.tenants.require(env.name))
    assert set(_open(env)) == {EDITS[1], *DISTINCT}
    assert _item(env, EDITS[0]).state == "backlog"
