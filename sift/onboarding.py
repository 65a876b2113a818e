"""Creating a classifier provisions everything it needs; nothing is configured by hand per tenant.

``create_classifier`` is the one onboarding path: the CLI, the admin API and ``sift up`` all call
it, so each creates the same things (config, first API key, Kafka topics, Label Studio project
and webhook).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from pydantic import ValidationError

from infra.settings import Settings
from infra.tenants import ClassifierConfig, TenantError, TenantStore
from sift.errors import validation_message

log = logging.getLogger(__name__)

Provisioner = Callable[[ClassifierConfig], None]
"""A step run after the config is stored (topics, review project); may update and save the config."""


def build_config(**fields: object) -> ClassifierConfig:
    try:
        return ClassifierConfig.model_validate(fields)
    except ValidationError as exc:
        raise TenantError(validation_message(exc)) from exc


def provisioners(settings: Settings, tenants: TenantStore) -> list[Provisioner]:
    def kafka_topics(cfg: ClassifierConfig) -> None:
        from infra.bus import Bus

        Bus(settings).ensure_topics()

    def review_project(cfg: ClassifierConfig) -> None:
        from review.labelstudio import ensure_project

        ensure_project(settings, tenants, cfg)

    return [kafka_topics, review_project]


def create_classifier(settings: Settings, tenants: TenantStore,
                      cfg: ClassifierConfig) -> tuple[ClassifierConfig, str, list[str]]:
    """Store the config, issue the first key, provision. Returns (config, key, warnings).

    A provisioning step that fails (say Label Studio is down) leaves a warning, not a half-made
    tenant: the review worker provisions the project lazily when it first needs it.
    """
    cfg, key = tenants.create(cfg)
    warnings = []
    for step in provisioners(settings, tenants):
        try:
            step(cfg)
        except Exception as exc:
            log.warning("provisioning %s for %s failed: %s", step.__name__, cfg.name, exc)
            warnings.append(f"{step.__name__} failed: {exc}")
    return tenants.require(cfg.name), key, warnings
