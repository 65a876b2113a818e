"""Restart test: the review worker is SIGKILLed and Label Studio is restarted mid-stream; every
request still ends up exactly once (as an open task or in the backlog) with every request
counted exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.local.stack import settings_env
from review.queue import ReviewItem
from tests.bus_helpers import wait_until
from tests.review_fixtures import ReviewEnv, review_env_fixture  # noqa: F401

pytestmark = [pytest.mark.labelstudio, pytest.mark.slow, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[1]
WINDOW = 40
TEXTS = 60


def start_worker(env: ReviewEnv, log: Path) -> subprocess.Popen[bytes]:
    """`sift worker review` as a real process (the CLI entry point, settings from SIFT_*)."""
    child_env = {k: v for k, v in os.environ.items() if not k.startswith("SIFT_")}
    child_env.update(settings_env(env.settings))
    return subprocess.Popen([sys.executable, "-m", "sift.cli", "worker", "review"], cwd=REPO, env=child_env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)


def items(env: ReviewEnv) -> list[ReviewItem]:
    prefix = f"review/{env.name}/items/"
    return [ReviewItem.model_validate(env.store.get_json(k)) for k in env.store.list_keys(prefix)]


def test_worker_and_label_studio_restart_lose_and_duplicate_nothing(review_env: ReviewEnv, tmp_path: Path) -> None:
    env = review_env
    tenants = env.api.services.tenants
    cfg = tenants.require(env.name)
    cfg.review_window = WINDOW
    tenants.save(cfg)
    texts = [f"restart text number {i}" for i in range(TEXTS)]
    firsts = [env.request(t, confidence=0.3 + i / 200) for i, t in enumerate(texts)]
    seconds = [env.request(t, source="user_feedback", verdict="dislike") for t in texts[:20]]
    log = tmp_path / "worker.log"

    # phase 1: the worker takes a stream, and is killed in the middle of it
    worker = start_worker(env, log)
    env.publish(*firsts[:25])
    assert wait_until(lambda: len(env.tasks()) >= 5, 60, 0.5), log.read_text()[-3000:]
    env.publish(*seconds[:10], *firsts[25:30])
    worker.send_signal(signal.SIGKILL)
    worker.wait(10)

    # phase 2: Label Studio goes down; a new worker keeps accepting requests into the backlog
    env.ls.server.stop()
    worker = start_worker(env, log)
    try:
        env.publish(*firsts[30:50], *seconds[10:20], *firsts[:5])  # firsts[:5]: redeliveries
        # while Label Studio is down, requests are accepted into the durable backlog (offsets move
        # on), and count updates of open tasks wait as dirty markers
        assert wait_until(lambda: env.queue().backlog_size(env.name) >= 20
                          and len(list(env.store.list_keys(f"review/{env.name}/dirty/"))) >= 5, 60, 0.5), \
            log.read_text()[-3000:]
        started = time.monotonic()
        env.ls.server.start(timeout=300)
        print(f"Label Studio restart: {time.monotonic() - started:.1f}s")

        # phase 3: more traffic after the restart, including redeliveries of already-counted events
        env.publish(*firsts[50:], *seconds[:3])

        def settled() -> bool:
            its = items(env)
            return (len(its) == TEXTS and sum(i.request_count for i in its) == TEXTS + len(seconds)
                    and sum(i.state == "open" for i in its) == WINDOW
                    and not list(env.store.list_keys(f"review/{env.name}/dirty/")))

        assert wait_until(settled, 120, 1.0), log.read_text()[-4000:]
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)

    its = {i.text: i for i in items(env)}
    tasks = env.tasks()
    task_texts = [t["data"]["text"] for t in tasks]
    assert len(task_texts) == len(set(task_texts)) == WINDOW, "a text got two tasks"
    backlog = env.queue().backlog_keys(env.name)
    backlog_texts = {next(i.text for i in its.values() if i.text_hash == k.rsplit("-", 1)[-1]) for k in backlog}
    assert len(backlog) == TEXTS - WINDOW
    assert backlog_texts.isdisjoint(task_texts) and backlog_texts | set(task_texts) == set(texts)
    for t in tasks:  # the task shows the durable count (updates made while LS was down were synced)
        assert t["data"]["request_count"] == its[t["data"]["text"]].request_count
    assert sum(i.request_count for i in its.values()) == TEXTS + len(seconds)
    # every request counted once: texts with a second (distinct) request show 2, the rest 1
    for i, text in enumerate(texts):
        assert its[text].request_count == (2 if i < 20 else 1), text
