"""FastAPI plumbing shared by every router: the app's services, API-key and admin-key checks.

Error bodies are always ``{"detail": "<human readable reason>"}``.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any, Protocol

from fastapi import Depends, Header, HTTPException, Path, Request
from starlette.concurrency import run_in_threadpool

from infra.objectstore import ObjectStore
from infra.predictions import PredictionStore
from infra.publisher import EventPublisher
from infra.settings import Settings
from infra.tenants import NAME_RE, ClassifierConfig, TenantCache, TenantStore


class Classifies(Protocol):
    """What the classify route needs of the serving engine (``classifier.engine.ServingEngine``)."""

    async def classify(self, classifier: str, texts: list[str]) -> list[Any]: ...


class HandlesWebhooks(Protocol):
    """What the review webhook needs of the collector (``review.collector.Collector``)."""

    def handle_webhook(self, payload: dict) -> bool: ...


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

    @classmethod
    def from_settings(cls, settings: Settings, **parts: Any) -> Services:
        store = ObjectStore(settings)
        tenants = TenantStore(store)
        return cls(settings, store, tenants, TenantCache(tenants, settings.config_cache_seconds), **parts)

    def close(self) -> None:
        """Flush what is written behind responses: prediction segments, spooled events."""
        for part in (self.publisher, self.predictions):
            if part is not None:
                part.close()


async def get_services(request: Request) -> Services:
    # async on purpose: FastAPI runs a plain ``def`` dependency in its thread pool, one hop per request
    return request.app.state.services


async def tenant_for_key(
    name: str = Path(..., description="classifier name"),
    x_api_key: str | None = Header(default=None, description="the classifier's API key"),
    services: Services = Depends(get_services),
) -> ClassifierConfig:
    """401 without a valid key, 403 for another tenant's key, 404 for an unknown classifier.

    Resolved inline while the tenant cache is fresh; only a cache miss (an object-store read) goes
    to a worker thread, so the hot path takes no thread hop.
    """
    if x_api_key and services.tenant_cache.is_fresh(name, x_api_key):
        return resolve_tenant(services.tenant_cache, name, x_api_key)
    return await run_in_threadpool(resolve_tenant, services.tenant_cache, name, x_api_key)


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
    x_admin_key: str | None = Header(default=None, description="the operator's admin key"),
    services: Services = Depends(get_services),
) -> None:
    check_admin(services, x_admin_key)


def check_admin(services: Services, x_admin_key: str | None) -> None:
    if not x_admin_key:
        raise HTTPException(401, "missing admin key: send it in the x-admin-key header")
    if not hmac.compare_digest(x_admin_key, services.settings.admin_key):
        raise HTTPException(403, "invalid admin key")
