"""The API process: classify, feedback, review webhooks and the admin API in one FastAPI app."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import Any, Literal, cast

from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field

from classifier.api import router as classify_router
from classifier.cold_start import cold_start_hook
from classifier.engine import LoadFailureHook, ServingEngine
from classifier.routing import BudgetRouter
from feedback.api import router as feedback_router
from infra.alerts import Alert, send_alert_later
from infra.guards import BodyLimit, Guards
from infra.http import ErrorBody, Services, errors, require_admin
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings, get_settings
from infra.tenant_events import TenantListener
from ops.api import drift_router
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
        long_text=settings.long_text_strategy,
        memory_budget_mb=settings.model_memory_mb,
    )
    engine_ = _engine(services)
    engine_.on_load_failure = load_failure_alert(services, settings)
    if engine_.cold_start is None:
        engine_.cold_start = cold_start_hook(services.tenants)
    services.predictions = PredictionStore(services.store)
    services.review_router = BudgetRouter()
    services.publisher = publisher or EventPublisher(settings)
    services.review_collector = build_collector(services, services.publisher)
    return services


def load_failure_alert(services: Services, settings: Settings) -> LoadFailureHook:
    """Alert once per champion version this replica cannot load (the poll retries it every interval)."""
    told: set[tuple[str, str]] = set()
    lock = threading.Lock()

    def hook(classifier: str, version: str, exc: BaseException) -> None:
        with lock:
            if (classifier, version) in told:
                return
            told.add((classifier, version))
        try:
            cfg = services.tenants.get(classifier)
        except Exception:  # the store may be what failed; the operator's webhook still hears of it
            cfg = None
        send_alert_later(Alert(kind="model_load_failed", classifier=classifier, source="sift-api",
                               message=f"champion v{version} could not be loaded on this replica, which keeps "
                                       f"serving what it had: {type(exc).__name__}: {exc}"[:1000],
                               details={"version": version, "host": socket.gethostname()}),
                         classifier_url=cfg.retrain.alert_webhook_url if cfg else None,
                         operator_url=settings.alert_webhook_url)

    return hook


def _engine(services: Services) -> ServingEngine:
    return cast(ServingEngine, services.engine)


def _preload(services: Services, done: threading.Event, failed: dict[str, str], concurrency: int) -> None:
    """Load every classifier's champion before declaring the replica ready; note what failed.

    Under a memory budget (``SIFT_MODEL_MEMORY_MB``) only as many as fit: the rest load on their
    first request.

    Several at once: with many tenants the downloads dominate and overlap (the engine loads one at a time).
    """
    engine = _engine(services)
    try:
        configs = services.tenants.list()
    except Exception as exc:
        log.exception("could not list the classifiers")
        failed["*"] = f"could not list the classifiers: {type(exc).__name__}: {exc}"
        configs = []

    def load(name: str) -> None:
        engine.slot(name)  # the model watcher's poll retries a slot whose load failed
        if not engine.has_room():
            return  # the memory budget is full: this one loads on its first request
        try:
            engine.refresh(name)
        except Exception as exc:
            log.exception("could not load the champion of %s", name)
            failed[name] = f"{type(exc).__name__}: {exc}"

    try:
        with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="preload") as pool:
            list(pool.map(load, [cfg.name for cfg in configs]))
    finally:
        done.set()


class Readiness(BaseModel):
    status: Literal["ready", "loading models", "not ready"]
    failed_count: int = Field(default=0, description="champions that exist but could not be loaded")
    models: dict[str, str] | None = Field(default=None, description="classifier -> version (admin key only)")
    failed: dict[str, str] | None = Field(default=None, description="classifier -> why (admin key only)")


class Health(BaseModel):
    status: Literal["ok"] = "ok"


AdminKeyHeader = Header(default=None, description="the admin key: details (readyz) or access (metrics)")


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def create_app(settings: Settings | None = None, *, engine: ServingEngine | None = None,
               publisher: EventPublisher | None = None) -> FastAPI:
    """``engine`` / ``publisher`` replace the ones built from settings (tests, benchmarks)."""
    settings = settings or get_settings()
    ready = threading.Event()
    failed: dict[str, str] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = build_services(settings, engine=engine, publisher=publisher)
        app.state.services = services
        threading.Thread(target=_preload, args=(services, ready, failed, settings.preload_concurrency),
                         daemon=True, name="preload").start()
        sharing = threading.Event()  # set at shutdown
        cast(BudgetRouter, services.review_router).start_sharing(
            services.store, services.tenant_cache.get, sharing, settings.routing_share_interval_s)
        watcher = None
        if settings.model_watch:
            from classifier.model_watch import ModelWatcher

            watcher = ModelWatcher(settings, _engine(services)).start()
        listener = TenantListener(settings, services.tenant_cache).start() if settings.tenant_watch else None
        app.state.tenant_listener, app.state.model_watcher = listener, watcher
        try:
            yield
        finally:
            sharing.set()
            if listener is not None:
                await asyncio.to_thread(listener.stop)
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
    app.include_router(drift_router)
    app.include_router(retrain_router)

    install_error_handlers(app)
    app.state.guards = Guards(settings.auth_failure_per_s, settings.auth_failure_burst)
    app.add_middleware(BodyLimit, max_body_bytes=settings.max_body_bytes, max_upload_bytes=settings.max_upload_bytes)

    @app.get("/healthz", tags=["ops"], response_model=Health)
    async def healthz() -> Health:
        """Liveness: answers from the event loop, no thread, no I/O."""
        return Health()

    async def admin_view(request: Request, x_admin_key: str | None) -> bool:
        """True with the right admin key, False without one; a wrong key is 401/403 (and counted)."""
        if x_admin_key is None:
            return False
        await require_admin(request, x_admin_key, request.app.state.services)
        return True

    @app.get("/readyz", tags=["ops"], response_model=Readiness,
             responses={503: {"model": Readiness, "description": "loading, or a champion failed to load"},
                        **errors(401, 403, 429)})
    async def readyz(request: Request, x_admin_key: str | None = AdminKeyHeader) -> JSONResponse:
        """Ready once every existing champion is loaded. Classifier names only with the admin key."""
        detailed = await admin_view(request, x_admin_key)
        services: Services = request.app.state.services
        engine = _engine(services)
        if not ready.is_set():
            body, code = Readiness(status="loading models"), 503
        else:
            still = {name: why for name, why in failed.items() if name == "*" or engine.loaded_version(name) is None}
            body = Readiness(status="not ready" if still else "ready", failed_count=len(still))
            code = 503 if still else 200
            if detailed:
                body.failed = still
        if detailed:
            body.models = {name: slot.model.version for name, slot in engine.slots.items() if slot.model}
        return JSONResponse(body.model_dump(exclude_none=True), status_code=code)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse,
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format"}, **errors(401, 403, 429)})
    async def prometheus_metrics(request: Request, x_admin_key: str | None = AdminKeyHeader) -> PlainTextResponse:
        """Needs the admin key (its labels name every classifier) unless SIFT_METRICS_PUBLIC=true."""
        if not settings.metrics_public and not await admin_view(request, x_admin_key or _bearer(request)):
            raise HTTPException(401, "metrics need the admin key (x-admin-key or Authorization: Bearer), "
                                     "or SIFT_METRICS_PUBLIC=true")
        return PlainTextResponse(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(FastAPI.openapi(app), settings)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def document_errors(schema: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """Make the OpenAPI say what this app really answers, beyond what each route declares.

    FastAPI documents 422 as its ``HTTPValidationError`` list, but the handler above answers
    ``{"detail": "<text>"}``; the body limit, malformed JSON and key checks apply across routes;
    the text limits are settings, so the request schemas get them here.
    """
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorBody"] = ErrorBody.model_json_schema()
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            responses = op.setdefault("responses", {})
            headers = {p["name"].lower() for p in op.get("parameters", []) if p.get("in") == "header"}
            content = op.get("requestBody", {}).get("content", {})
            codes = {"422": "invalid input; detail names the field"} if op.get("parameters") or content else {}
            if content:
                codes["413"] = "request body over its limit"
            if "application/json" in content:
                codes["400"] = "malformed JSON body"
            if headers & {"x-api-key", "x-admin-key"}:
                codes |= {"401": "missing or malformed key", "403": "wrong key", "429": "rate limited"}
            for code, text in codes.items():
                error = responses.setdefault(code, {"description": text})
                if "HTTPValidationError" in str(error.get("content")):
                    error["description"] = text
                error["content"] = {"application/json": {"schema": ERROR_REF}}
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    text = {"maxLength": settings.max_text_chars}
    if clf := schemas.get("ClassifyRequest"):
        clf["properties"]["text"] |= text
        clf["properties"]["texts"]["items"] |= text
        clf["properties"]["texts"]["maxItems"] = settings.max_batch_texts
    if fb := schemas.get("FeedbackRequest"):
        fb["properties"]["text"] |= text
    return schema
