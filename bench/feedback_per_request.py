"""The single-feedback path before group commit, for ``bench/feedback.py`` to measure against in the
same run: Sift's feedback app, whose publisher answers ``submit_durable`` the old way — each
request's event published alone with ``publish_durable`` (its own produce, its own wait for the
ack) in a worker thread from a pool of 40, as the sync endpoint ran in anyio's 40-thread pool.

    uvicorn --factory bench.feedback_per_request:create_app
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

from fastapi import FastAPI

from infra.events import Event
from infra.publisher import DurableOutcome, EventPublisher
from infra.settings import get_settings
from sift.feedback_app import create_feedback_app

WORKER_THREADS = 40  # anyio's default limit for sync endpoints


class PerRequestPublisher(EventPublisher):
    """One broker round trip per request, waited for in a thread: no group commit."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="per-request")

    def submit_durable(self, short_topic: str, event: Event, *, timeout: float = 5.0) -> Future[DurableOutcome]:
        return self._pool.submit(self.publish_durable, short_topic, event, timeout=timeout)


def create_app() -> FastAPI:
    settings = get_settings()
    return create_feedback_app(settings, publisher=PerRequestPublisher(settings))
