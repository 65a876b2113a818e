"""Operator API (``x-admin-key``): onboard, inspect, tune and remove classifiers, manage keys."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Depends, HTTPException, Response
from pydantic import BaseModel, Field, ValidationError

from infra.http import KeyFirstRoute, Services, get_services, require_admin
from infra.tenants import AlreadyExists, ClassifierConfig, NotFound, RetrainPolicy, TenantError
from sift.errors import validation_message
from sift.onboarding import build_config, create_classifier

router = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)],
                   route_class=KeyFirstRoute)


class CreateClassifier(BaseModel):
    name: str
    labels: list[str]
    threshold: float | None = Field(default=None, description="default 0.6; with a review budget: derived")
    review_budget_per_day: int | None = None
    base_model: str = ""
    description: str = ""
    review_window: int = 50
    review_sample_rate: float = Field(default=0.0, description="0..1: audit sample of served texts sent to review")
    rate_limit_per_s: float = 200.0
    rate_limit_burst: int = 400
    retrain: RetrainPolicy = Field(default_factory=RetrainPolicy)
    cold_start: bool = Field(default=True, description="serve label prototypes until a model is trained")
    label_descriptions: dict[str, str] = Field(default_factory=dict, description="label -> what it covers")
    seed_examples: dict[str, list[str]] = Field(default_factory=dict, description="label -> a few examples")


class UpdateClassifier(BaseModel):
    threshold: float | None = Field(default=None, description="null: derive it from the review budget")
    review_budget_per_day: int | None = Field(default=None, description="null: no budget")
    description: str | None = None
    review_window: int | None = None
    review_sample_rate: float | None = None
    rate_limit_per_s: float | None = None
    rate_limit_burst: int | None = None
    retrain: RetrainPolicy | None = None
    cold_start: bool | None = None
    label_descriptions: dict[str, str] | None = None
    seed_examples: dict[str, list[str]] | None = None


class ClassifierView(BaseModel):
    name: str
    labels: list[str]
    threshold: float | None
    review_budget_per_day: int | None
    base_model: str
    description: str
    review_window: int
    review_sample_rate: float
    rate_limit_per_s: float
    rate_limit_burst: int
    retrain: RetrainPolicy
    cold_start: bool
    label_descriptions: dict[str, str]
    seed_examples: dict[str, list[str]]
    label_studio_project_id: int | None
    api_key_ids: list[str]
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, cfg: ClassifierConfig) -> ClassifierView:
        data = cfg.model_dump(exclude={"api_keys"})
        return cls(**data, api_key_ids=[k.key_id for k in cfg.api_keys])


class Created(BaseModel):
    classifier: ClassifierView
    api_key: str = Field(description="shown once; store it now")
    warnings: list[str] = Field(default_factory=list)


class NewKey(BaseModel):
    api_key: str
    key_id: str


NULLABLE = {"threshold", "review_budget_per_day"}


def config_changes(body: UpdateClassifier) -> dict[str, object]:
    """The fields a PATCH changes. An explicit null clears ``threshold`` or ``review_budget_per_day``;
    a budget sent without a threshold hands routing to the budget (send both to keep a fixed one)."""
    sent = body.model_dump(exclude_unset=True)
    changes = {k: v for k, v in sent.items() if v is not None or k in NULLABLE}
    if changes.get("review_budget_per_day") is not None and "threshold" not in changes:
        changes["threshold"] = None
    return changes


def _tenant_error(exc: TenantError) -> HTTPException:
    if isinstance(exc, NotFound):
        return HTTPException(404, str(exc))
    if isinstance(exc, AlreadyExists):
        return HTTPException(409, str(exc))
    return HTTPException(422, str(exc))


@router.post("/classifiers", status_code=201, response_model=Created)
def create(body: CreateClassifier, services: Services = Depends(get_services)) -> Created:
    try:
        cfg = build_config(**body.model_dump())
        cfg, key, warnings = create_classifier(services.settings, services.tenants, cfg)
    except TenantError as exc:
        raise _tenant_error(exc) from exc
    services.tenant_cache.invalidate()
    return Created(classifier=ClassifierView.of(cfg), api_key=key, warnings=warnings)


@router.get("/classifiers", response_model=list[ClassifierView])
def list_all(services: Services = Depends(get_services)) -> list[ClassifierView]:
    return [ClassifierView.of(c) for c in services.tenants.list()]


@router.get("/classifiers/{name}", response_model=ClassifierView)
def show(name: str, services: Services = Depends(get_services)) -> ClassifierView:
    try:
        return ClassifierView.of(services.tenants.require(name))
    except TenantError as exc:
        raise _tenant_error(exc) from exc


@router.patch("/classifiers/{name}", response_model=ClassifierView)
def update(name: str, body: UpdateClassifier, services: Services = Depends(get_services)) -> ClassifierView:
    try:
        cfg = services.tenants.require(name)
        merged = cfg.model_dump() | config_changes(body)
        try:
            updated = ClassifierConfig.model_validate(merged)
        except ValidationError as exc:
            raise TenantError(validation_message(exc)) from exc
        services.tenants.save(updated)
    except TenantError as exc:
        raise _tenant_error(exc) from exc
    services.tenant_cache.invalidate(name)
    return ClassifierView.of(updated)


@router.delete("/classifiers/{name}", status_code=204)
def delete(name: str, services: Services = Depends(get_services)) -> Response:
    try:
        services.tenants.delete(name)
    except TenantError as exc:
        raise _tenant_error(exc) from exc
    services.tenant_cache.invalidate()
    return Response(status_code=204)


@router.post("/classifiers/{name}/keys", status_code=201, response_model=NewKey)
def issue_key(name: str, services: Services = Depends(get_services)) -> NewKey:
    try:
        key = services.tenants.issue_key(name)
        cfg = services.tenants.require(name)
    except TenantError as exc:
        raise _tenant_error(exc) from exc
    return NewKey(api_key=key, key_id=cfg.api_keys[-1].key_id)


@router.delete("/classifiers/{name}/keys/{key_id}", status_code=204)
def revoke_key(name: str, key_id: str, services: Services = Depends(get_services)) -> Response:
    try:
        services.tenants.revoke_key(name, key_id)
    except TenantError as exc:
        raise _tenant_error(exc) from exc
    services.tenant_cache.invalidate()
    return Response(status_code=204)
