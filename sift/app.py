"""The API process: classify, feedback, review webhooks and the admin API in one FastAPI app."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import cast

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from classifier.api import router as classify_router
from classifier.engine import ServingEngine
from feedback.api import router as feedback_router
from infra.http import Services
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings, get_settings
from ops.api import router as dead_letters_router
from retrain.api import router as retrain_router
from review.api import build_collector
from review.api import router as review_router
from sift import admin
from sift.errors import install_error_handlers

log = logging.getLogger(__name__)


def registry_champion_resolver(settings: Settings):  # noqa: ANN201 - returns a ChampionResolver
    """Resolve a classifier's champion through MLflow and download it into the local cache."""
    from infra.registry import Registry

    registry: Registry | None = None

    def resolve(classifier: str) -> tuple[str, str] | None:
        nonlocal registry
        registry = registry or Registry(settings)
        ref = registry.champion(classifier)
        if ref is None:
            return None
        return ref.version, str(registry.download(ref))

    return resolve


def build_services(settings: Settings, *, engine: ServingEngine | None = None,
                   publisher: EventPublisher | None = None) -> Services:
    """Every part of the API process, built once; ``engine`` and ``publisher`` may be given (tests)."""
    services = Services.from_settings(settings)
    services.store.ensure_bucket()
    services.engine = engine or ServingEngine(
        registry_champion_resolver(settings),
        max_batch=settings.batch_max_size,
        max_wait_s=settings.batch_max_wait_ms / 1000,
        torch_threads=settings.torch_threads,
        quantize=settings.quantize,
        runtime=settings.serving_runtime,
    )
    services.predictions = PredictionStore(services.store)
    services.publisher = publisher or EventPublisher(settings)
    services.review_collector = build_collector(services, services.publisher)
    return services


def _engine(services: Services) -> ServingEngine:
    return cast(ServingEngine, services.engine)


def _preload(services: Services, done: threading.Event) -> None:
    """Load every classifier's champion before declaring the replica ready."""
    engine = _engine(services)
    try:
        for cfg in services.tenants.list():
            try:
                engine.refresh(cfg.name)
            except Exception:
                log.exception("could not load the champion of %s", cfg.name)
    finally:
        done.set()


def create_app(settings: Settings | None = None, *, engine: ServingEngine | None = None,
               publisher: EventPublisher | None = None) -> FastAPI:
    """``engine`` / ``publisher`` replace the ones built from settings (tests, benchmarks)."""
    settings = settings or get_settings()
    ready = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, engine=engine, publisher=publisher)
        app.state.services = services
        threading.Thread(target=_preload, args=(services, ready), daemon=True, name="preload").start()
        watcher = None
        if settings.model_watch:
            from classifier.model_watch import ModelWatcher

            watcher = ModelWatcher(settings, _engine(services)).start()
        try:
            yield
        finally:
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)
            await _engine(services).aclose()
            await asyncio.to_thread(services.close)

    app = FastAPI(
        title="Sift",
        version="0.1.0",
        description="Active-learning text classification: classify, send feedback, review, retrain.",
        lifespan=lifespan,
    )
    app.include_router(classify_router)
    app.include_router(feedback_router)
    app.include_router(review_router)
    app.include_router(admin.router)
    app.include_router(dead_letters_router)
    app.include_router(retrain_router)

    install_error_handlers(app)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        if not ready.is_set():
            return JSONResponse({"status": "loading models"}, status_code=503)
        versions = {name: slot.model.version for name, slot in _engine(services).slots.items() if slot.model}
        return JSONResponse({"status": "ready", "models": versions})

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
