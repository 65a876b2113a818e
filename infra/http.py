"""FastAPI plumbing shared by every router: the app's services, API-key and admin-key checks.

Error bodies are always ``{"detail": "<human readable reason>"}``.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Depends, Header, HTTPException, Path, Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from infra.guards import Guards, client_address, too_many
from infra.objectstore import ObjectStore
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import NAME_RE, ClassifierConfig, TenantCache, TenantStore, hash_key


class Classifies(Protocol):
    """What the classify route needs of the serving engine (``classifier.engine.ServingEngine``)."""

    async def classify(self, classifier: str, texts: list[str]) -> list[Any]: ...


class HandlesWebhooks(Protocol):
    """What the review webhook needs of the collector (``review.collector.Collector``)."""

    def handle_webhook(self, payload: dict) -> bool: ...


class RoutesReviews(Protocol):
    """What the classify route needs of the review router (``classifier.routing.BudgetRouter``)."""

    def observe(self, classifier: str, confidence: float) -> None: ...

    def threshold(self, cfg: ClassifierConfig) -> float: ...


@dataclass
class Services:
    """What a running API process shares between routers (stored on ``app.state.services``).

    Built once by the app factory (``sift/``); a part a process does not run stays None and the
    route that needs it answers 503. Stage types appear as protocols: infra imports no stage.
    """

    settings: Settings
    store: ObjectStore
    tenants: TenantStore
    tenant_cache: TenantCache
    publisher: EventPublisher | None = None
    predictions: PredictionStore | None = None
    engine: Classifies | None = None
    review_collector: HandlesWebhooks | None = None
    review_router: RoutesReviews | None = None  # None: each config's fixed threshold

    @classmethod
    def from_settings(cls, settings: Settings, **parts: Any) -> Services:
        from infra.tenant_events import TenantNotifier

        store = ObjectStore(settings)
        tenants = TenantStore(store, on_change=TenantNotifier(settings))
        return cls(settings, store, tenants, TenantCache(tenants, settings.config_cache_seconds), **parts)

    def close(self) -> None:
        """Flush what is written behind responses: prediction segments, spooled events."""
        for part in (self.publisher, self.predictions, self.tenants.on_change):
            close = getattr(part, "close", None)
            if close is not None:
                close()


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one hop per request
    return request.app.state.services


async def tenant_for_key(
    request: Request,
    name: str = Path(..., description="classifier name"),
    x_api_key: str | None = Header(default=None, description="the classifier's API key"),
    services: Services = Depends(get_services),
) -> ClassifierConfig:
    """401 without a valid key, 403 for another tenant's key, 404 for an unknown classifier, 429 over
    the key's rate limit (or after too many bad keys from this address).

    Usually already done by ``KeyFirstRoute`` before the body was read; then this returns its result.
    """
    done = getattr(request.state, "sift_tenant", None)
    if done is not None:
        return done
    cfg = await authenticate_key(request, services, name, x_api_key)
    request.state.sift_tenant = cfg
    return cfg


async def authenticate_key(request: Request, services: Services, name: str, x_api_key: str | None) -> ClassifierConfig:
    """Resolved inline while the tenant cache is fresh; only a cache miss (an object-store read) goes
    to a worker thread, so the hot path takes no thread hop."""
    guards: Guards | None = getattr(request.app.state, "guards", None)
    client = client_address(request)
    fresh = bool(x_api_key) and services.tenant_cache.is_fresh(name, x_api_key or "")
    if guards is not None and not fresh:
        guards.auth_failures.check(client)
    try:
        if fresh:
            cfg = resolve_tenant(services.tenant_cache, name, x_api_key)
        else:
            cfg = await run_in_threadpool(resolve_tenant, services.tenant_cache, name, x_api_key)
    except HTTPException as exc:
        if guards is not None and exc.status_code in (401, 403):
            guards.auth_failures.failed(client)
        raise
    if guards is not None:
        assert x_api_key is not None
        wait = guards.keys.take(f"key:{hash_key(x_api_key)}", cfg.rate_limit_per_s, cfg.rate_limit_burst)
        if wait:
            raise too_many(f"rate limit of classifier {name!r} reached ({cfg.rate_limit_per_s:g} requests/s per "
                           f"key, bursts of {cfg.rate_limit_burst}); retry later", wait)
    return cfg


def resolve_tenant(cache: TenantCache, name: str, x_api_key: str | None) -> ClassifierConfig:
    if not x_api_key:
        raise HTTPException(401, "missing API key: send it in the x-api-key header")
    owner = cache.key_owner(x_api_key)
    if owner is None:
        raise HTTPException(401, "invalid API key")
    cfg = require_classifier(cache, name)
    if owner != name:
        raise HTTPException(403, f"this API key is not allowed to use classifier {name!r}")
    return cfg


def require_classifier(cache: TenantCache, name: str) -> ClassifierConfig:
    """404 for a malformed or unknown classifier name."""
    cfg = cache.get(name) if NAME_RE.match(name) else None
    if cfg is None:
        raise HTTPException(404, f"unknown classifier {name!r}")
    return cfg


async def require_admin(
    request: Request,
    x_admin_key: str | None = Header(default=None, description="the operator's admin key"),
    services: Services = Depends(get_services),
) -> None:
    if getattr(request.state, "sift_admin", False):
        return
    guards: Guards | None = getattr(request.app.state, "guards", None)
    client = client_address(request)
    if guards is not None:
        guards.auth_failures.check(client)
    try:
        check_admin(services, x_admin_key)
    except HTTPException:
        if guards is not None:
            guards.auth_failures.failed(client)
        raise
    request.state.sift_admin = True


def check_admin(services: Services, x_admin_key: str | None) -> None:
    """401 without a well-formed key, 403 for a wrong one; any header bytes compare safely."""
    if not x_admin_key:
        raise HTTPException(401, "missing admin key: send it in the x-admin-key header")
    if not keys_equal(x_admin_key, services.settings.admin_key):
        if not x_admin_key.isascii() or not x_admin_key.isprintable():
            raise HTTPException(401, "malformed admin key: it is printable ASCII")
        raise HTTPException(403, "invalid admin key")


def keys_equal(given: str, expected: str) -> bool:
    """Constant-time compare of any two strings (``hmac.compare_digest`` raises on non-ASCII str)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def _dependency_calls(route: APIRoute) -> set[Any]:
    calls, stack = set(), [route.dependant]
    while stack:
        dep = stack.pop()
        calls.add(dep.call)
        stack.extend(dep.dependencies)
    return calls


class KeyFirstRoute(APIRoute):
    """Checks the route's API key or admin key before FastAPI reads and parses the body.

    FastAPI parses the body before it runs dependencies, so without this a caller with no key
    learns about its JSON (400/422) and makes the server read and parse up to the body limit.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        calls = _dependency_calls(self)
        api_key, admin = tenant_for_key in calls, require_admin in calls
        if not (api_key or admin):
            return handler

        async def key_first(request: Request) -> Response:
            services: Services = request.app.state.services
            if api_key:
                await tenant_for_key(request, request.path_params.get("name", ""),
                                     request.headers.get("x-api-key"), services)
            if admin:
                await require_admin(request, request.headers.get("x-admin-key"), services)
            return await handler(request)

        return key_first


class ErrorBody(BaseModel):
    """Every error the API answers: 4xx and 5xx alike."""

    detail: str = Field(description="what went wrong, for a human")


ERROR_TEXT = {
    400: "malformed JSON body",
    401: "missing or invalid key",
    403: "the key may not use this resource",
    404: "unknown classifier",
    409: "conflict with the current state",
    413: "request body, text or batch over its limit",
    422: "invalid input; detail names the field",
    429: "rate limited; see Retry-After",
    503: "not available right now; see Retry-After",
}


def errors(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status with the one error body, ``{"detail": "..."}``.

    ``described`` overrides a description by code, e.g. ``errors(404, e404="unknown prediction")``.
    """
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        out[code] = {"model": ErrorBody, "description": described.get(f"e{code}", ERROR_TEXT.get(code, "error"))}
    return out
