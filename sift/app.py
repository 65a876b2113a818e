"""The API process: classify, feedback, review webhooks and the admin API in one FastAPI app."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from classifier.api import router as classify_router
from classifier.engine import ServingEngine
from feedback.api import router as feedback_router
from infra.http import Services
from infra.predictions import PredictionStore
from infra.settings import Settings, get_settings
from ops.api import router as dead_letters_router
from retrain.api import router as retrain_router
from review.api import router as review_router
from sift import admin
from sift.onboarding import validation_message

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


def build_services(settings: Settings, **extras: Any) -> Services:
    services = Services.from_settings(settings)
    services.store.ensure_bucket()
    services.extras.update(extras)
    if "engine" not in services.extras:
        services.extras["engine"] = ServingEngine(
            registry_champion_resolver(settings),
            max_batch=settings.batch_max_size,
            max_wait_s=settings.batch_max_wait_ms / 1000,
            torch_threads=settings.torch_threads,
            quantize=settings.quantize,
            runtime=settings.serving_runtime,
        )
    services.extras.setdefault("predictions", PredictionStore(services.store))
    if "publisher" not in services.extras:
        from infra.publisher import EventPublisher

        services.extras["publisher"] = EventPublisher(settings)
    return services


def _preload(services: Services, done: threading.Event) -> None:
    """Load every classifier's champion before declaring the replica ready."""
    engine: ServingEngine = services.extras["engine"]
    try:
        for cfg in services.tenants.list():
            try:
                engine.refresh(cfg.name)
            except Exception:
                log.exception("could not load the champion of %s", cfg.name)
    finally:
        done.set()


def create_app(settings: Settings | None = None, **extras: Any) -> FastAPI:
    """``extras`` override services (an engine, a publisher) — tests and the CLI use that."""
    settings = settings or get_settings()
    ready = threading.Event()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, **extras)
        app.state.services = services
        threading.Thread(target=_preload, args=(services, ready), daemon=True, name="preload").start()
        watcher = None
        if settings.model_watch:
            from classifier.model_watch import ModelWatcher

            watcher = ModelWatcher(settings, services.extras["engine"]).start()
        try:
            yield
        finally:
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)
            engine: ServingEngine = services.extras["engine"]
            await engine.aclose()
            for name in ("publisher", "predictions"):
                closer = getattr(services.extras.get(name), "close", None)
                if closer:
                    await asyncio.to_thread(closer)

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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse({"detail": "malformed JSON body"}, status_code=400)
        return JSONResponse({"detail": validation_message(exc)}, status_code=422)

    @app.get("/healthz", tags=["ops"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"])
    def readyz(request: Request) -> JSONResponse:
        services: Services = request.app.state.services
        if not ready.is_set():
            return JSONResponse({"status": "loading models"}, status_code=503)
        engine: ServingEngine = services.extras["engine"]
        versions = {name: slot.model.version for name, slot in engine.slots.items() if slot.model}
        return JSONResponse({"status": "ready", "models": versions})

    @app.get("/metrics", tags=["ops"])
    def prometheus_metrics() -> PlainTextResponse:
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return app
