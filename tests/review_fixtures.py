"""Fixtures for the review-stage tests: a real Label Studio, broker and S3, the review router
served by uvicorn on loopback (so Label Studio's webhooks really arrive), one fresh classifier
per test with its own topic prefix."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import uvicorn
from fastapi import FastAPI

from infra.bus import Bus
from infra.events import TOPIC_REVIEW_REQUESTS, ReviewedLabel, ReviewRequest
from infra.http import Services
from infra.local.procs import LOOPBACK, free_port
from infra.publisher import EventPublisher
from infra.reviewed import load_reviewed
from infra.settings import Settings
from infra.tenants import ClassifierConfig
from review.api import build_collector, router
from review.collector import Collector
from review.labelstudio import ReviewProjects, ensure_project
from review.queue import ReviewQueue
from review.worker import GROUP_ID as REVIEW_GROUP
from review.worker import run_review_worker
from tests.bus_helpers import committed_offset, isolated, read_topic, wait_until
from tests.services import exported

LABELS = ["sports", "tech", "politics"]


class ApiServer:
    """The review router in a real HTTP server (Label Studio must reach it over TCP)."""

    def __init__(self, settings: Settings) -> None:
        self.port = free_port()
        self.publisher = EventPublisher(settings)
        self.services = Services.from_settings(settings, publisher=self.publisher)
        self.services.review_collector = build_collector(self.services, self.publisher)
        app = FastAPI()
        app.state.services = self.services
        app.include_router(router)
        self.app = app
        self.server = uvicorn.Server(uvicorn.Config(app, host=LOOPBACK, port=self.port, log_level="warning",
                                                    lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> ApiServer:
        self.thread.start()
        assert wait_until(lambda: self.server.started, 15)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.publisher.close()


@dataclass
class WorkerThread:
    settings: Settings
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    name: str | None = None  # the thread's name: log records tell workers apart by it

    def start(self, tick_s: float = 1.0) -> WorkerThread:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=run_review_worker, args=(self.settings, self.stop),
                                       kwargs={"tick_s": tick_s}, daemon=True, name=self.name)
        self.thread.start()
        return self

    def halt(self) -> None:
        self.stop.set()
        if self.thread:
            self.thread.join(30)


@dataclass
class ReviewEnv:
    settings: Settings
    api: ApiServer
    cfg: ClassifierConfig
    projects: ReviewProjects
    ls: Any  # tests.services.LabelStudioService
    bus: Bus
    producer: Any
    published: int = 0  # requests sent on the review-requests topic

    @property
    def name(self) -> str:
        return self.cfg.name

    @property
    def project_id(self) -> int:
        assert self.cfg.label_studio_project_id is not None
        return self.cfg.label_studio_project_id

    @property
    def store(self):  # noqa: ANN201
        return self.api.services.store

    def queue(self) -> ReviewQueue:
        return ReviewQueue(self.settings, self.store, self.api.services.tenants, self.projects)

    def request(self, text: str, **kw: Any) -> ReviewRequest:
        defaults: dict[str, Any] = dict(classifier=self.name, text=text, predicted_label="tech",
                                        confidence=0.41, scores={"tech": 0.41, "sports": 0.35, "politics": 0.24},
                                        model_version="3", source="low_confidence")
        defaults.update(kw)
        return ReviewRequest(**defaults)

    def publish(self, *events: ReviewRequest) -> None:
        for ev in events:
            self.bus.send_sync(self.producer, TOPIC_REVIEW_REQUESTS, ev)
        self.published += len(events)

    def settled(self) -> bool:
        """The review worker has handled every published request (its group committed past them) and
        none waits in the backlog: the tasks in Label Studio are all there will be."""
        return (committed_offset(self.settings, REVIEW_GROUP, TOPIC_REVIEW_REQUESTS) >= self.published
                and self.queue().backlog_size(self.name) == 0)

    def tasks(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for _, page in self.projects._pages(self.project_id, '{"filters": {"conjunction": "and", "items": []}}',
                                            fields="all"):
            out.extend(page)
        return out

    def wait_tasks(self, n: int, timeout_s: float = 60) -> list[dict[str, Any]]:
        """The tasks once at least ``n`` exist and every published request was handled (so a
        duplicate would be among them)."""
        wait_until(lambda: len(self.tasks()) >= n and self.settled(), timeout_s, 0.5)
        return self.tasks()

    def reviewed_events(self, expect: int | None = None, timeout_s: float = 30) -> list[ReviewedLabel]:
        self.api.publisher.flush(15)
        events = read_topic(self.settings, "reviewed-labels", expect=expect, timeout_s=timeout_s)
        return events  # type: ignore[return-value]

    def dataset_keys(self) -> list[str]:
        return sorted(self.store.list_keys(f"datasets/{self.name}/reviewed/"))

    def reviewed(self, **kw: Any) -> list[ReviewedLabel]:
        return load_reviewed(self.store, self.name, **kw)

    def collector(self) -> Collector:
        return Collector(self.settings, self.store, self.api.services.tenants,
                         lambda ev: self.bus.send_sync(self.producer, "reviewed-labels", ev), self.projects)


@pytest.fixture(name="review_env")
def review_env_fixture(sift_settings: Settings, label_studio: Any) -> Iterator[ReviewEnv]:
    # topics of its own, the session's bucket: a bucket per review test exhausted the session
    # SeaweedFS's volumes (each bucket is a collection with volumes of its own: PutObject
    # InternalError for every later test); consumer groups carry the prefix, so workers of other
    # tests never rebalance this one's
    base = isolated(sift_settings)
    probe = ApiServer(base)  # reserve the port first: the webhook URL must name it
    settings = base.model_copy(update={"public_api_url": probe.url, "webhook_secret": uuid.uuid4().hex})
    probe.services.settings = settings
    probe.services.review_collector = build_collector(probe.services, probe.publisher)  # with these settings
    api = probe.start()
    bus = Bus(settings)
    bus.ensure_topics()
    producer = bus.producer()
    tenants = api.services.tenants
    # near-duplicate holding off: these tests' texts differ by a number ("restart text number 7"), which
    # the window would rightly treat as copies; tests/test_review_window.py turns it on
    cfg, _key = tenants.create(ClassifierConfig(name=f"rv-{uuid.uuid4().hex[:8]}", labels=LABELS, review_window=50,
                                                near_duplicate_similarity=1.0))
    projects = ReviewProjects.from_settings(settings)
    ensure_project(settings, tenants, cfg, projects)
    env = ReviewEnv(settings, api, cfg, projects, label_studio, bus, producer)
    env.api_key = _key  # type: ignore[attr-defined]
    try:
        with exported(settings):  # the CLI (get_settings) reads this test's bucket too
            yield env
    finally:
        producer.close(timeout=5)
        api.stop()
