"""A feedback-only API process: the feedback router without the model runtime.

The main app (``sift.app``) mounts the same router next to classify; this one starts in a second
without torch, so feedback ingestion can be scaled on its own and tests/benchmarks can run it
as a real server cheaply. ``uvicorn --factory feedback.standalone:create_feedback_app``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from feedback.api import router
from infra.http import Services
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings, get_settings


def validation_detail(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def create_feedback_app(settings: Settings | None = None, **extras: Any) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services.from_settings(settings)
        services.extras.update(extras)
        services.extras.setdefault("predictions", PredictionStore(services.store))
        services.extras.setdefault("publisher", EventPublisher(settings))
        app.state.services = services
        try:
            yield
        finally:
            for name in ("publisher", "predictions"):
                closer = getattr(services.extras.get(name), "close", None)
                if closer:
                    await asyncio.to_thread(closer)

    app = FastAPI(title="Sift feedback", lifespan=lifespan)
    app.include_router(router)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return JSONResponse({"detail": "malformed JSON body"}, status_code=400)
        return JSONResponse({"detail": validation_detail(exc)}, status_code=422)

    @app.get("/healthz")
    def healthz() -> dict[str, Any]:
        services: Services = app.state.services
        stats = services.extras["publisher"].stats()
        return {"status": "ok", "publisher": stats.model_dump()}

    return app
