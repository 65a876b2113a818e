"""A feedback-only API process: the feedback router without the model runtime.

The main app (``sift.app``) mounts the same router next to classify; this one starts in a second
without torch, so feedback ingestion can be scaled on its own and tests/benchmarks can run it
as a real server cheaply. ``uvicorn --factory sift.feedback_app:create_feedback_app``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from feedback.api import router
from infra.guards import BodyLimit, Guards
from infra.http import Services
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings, get_settings
from infra.tenant_events import TenantListener
from sift.errors import install_error_handlers


def create_feedback_app(settings: Settings | None = None, *, publisher: EventPublisher | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.from_settings(settings, publisher=publisher or EventPublisher(settings))
        services.predictions = PredictionStore(services.store)
        app.state.services = services
        listener = TenantListener(settings, services.tenant_cache).start() if settings.tenant_watch else None
        try:
            yield
        finally:
            if listener is not None:
                await asyncio.to_thread(listener.stop)
            await asyncio.to_thread(services.close)

    app = FastAPI(title="Sift feedback", lifespan=lifespan)
    app.include_router(router)
    install_error_handlers(app)
    # the same limits as the main app (sift.app)
    app.state.guards = Guards(settings.auth_failure_per_s, settings.auth_failure_burst)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        services: Services = app.state.services
        assert services.publisher is not None
        return {"status": "ok", "publisher": services.publisher.stats().model_dump()}

    return app
