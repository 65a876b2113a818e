"""Finished Label Studio tasks are deleted once collected and old enough, on a real Label Studio."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from review.labelstudio import TaskSpec, choice_result
from sift.gc import task_pruner
from tests.bus_helpers import wait_until
from tests.review_fixtures import LABELS, ReviewEnv, review_env_fixture  # noqa: F401


def test_collected_finished_tasks_are_deleted_after_the_policy(review_env: ReviewEnv) -> None:
    env = review_env
    texts = ["collected one", "collected two", "still open", "answered after the collection"]
    ids = env.projects.create_tasks(env.project_id, [TaskSpec(data={"text": t, "classifier": env.name})
                                                     for t in texts], LABELS)
    client = env.projects.client
    client.annotations.create(id=ids[0], result=choice_result(LABELS[0]))
    client.annotations.create(id=ids[1], result=[], was_cancelled=True)  # a skip is collected too
    client.annotations.create(id=ids[3], result=choice_result(LABELS[1]))
    prefix = f"review/{env.name}/collected/"  # the marker is written last: wait on it, not the dataset file
    assert wait_until(lambda: len(list(env.store.list_keys(prefix))) == 3, 30, 0.2), env.dataset_keys()
    for key in list(env.store.list_keys(prefix)):  # as if the last webhook was lost, not yet reconciled
        if env.store.get_json(env.store.get_bytes(key).decode())["review_task_id"] == int(ids[3]):
            env.store.delete(key)
    assert len(list(env.store.list_keys(prefix))) == 2

    cfg = env.api.services.tenants.require(env.name)
    prune = task_pruner(env.settings, env.store)
    now = datetime.now(UTC)
    assert prune(cfg, now, False) == []  # younger than finished_tasks_days (30)
    later = now + timedelta(days=cfg.retention.finished_tasks_days + 1)
    assert prune(cfg, later, True) == ids[:2]
    assert sorted(t["id"] for t in env.tasks()) == sorted(ids), "a dry run deletes nothing"
    assert prune(cfg, later, False) == ids[:2]
    assert sorted(t["id"] for t in env.tasks()) == sorted(ids[2:])
    assert len(env.reviewed(include_skipped=True)) == 3  # the collected labels stay in the dataset
