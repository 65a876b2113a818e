"""Creating a classifier provisions everything it needs; nothing is configured by hand per tenant."""

from __future__ import annotations

import logging
from collections.abc import Callable

from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from infra.tenants import ClassifierConfig, TenantError, TenantStore

log = logging.getLogger(__name__)

Provisioner = Callable[[ClassifierConfig], None]
"""A step run after the config is stored (topics, review project); may update and save the config."""


def validation_message(exc: ValidationError | RequestValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
        msg = err.get("msg", "invalid").removeprefix("Value error, ")
        parts.append(f"{where}: {msg}" if where else msg)
    return "; ".join(parts)


def build_config(**fields: object) -> ClassifierConfig:
    try:
        return ClassifierConfig.model_validate(fields)
    except ValidationError as exc:
        raise TenantError(validation_message(exc)) from exc


def create_classifier(
    tenants: TenantStore, cfg: ClassifierConfig, provisioners: list[Provisioner] | None = None
) -> tuple[ClassifierConfig, str, list[str]]:
    """Store the config, issue the first key, run provisioners. Returns (config, key, warnings).

    A provisioner that fails (say Label Studio is down) leaves a warning, not a half-made tenant:
    the review worker provisions the project lazily when it first needs it.
    """
    cfg, key = tenants.create(cfg)
    warnings = []
    for step in provisioners or []:
        try:
            step(cfg)
        except Exception as exc:
            log.warning("provisioning %s for %s failed: %s", getattr(step, "__name__", step), cfg.name, exc)
            warnings.append(f"{getattr(step, '__name__', 'provisioning')} failed: {exc}")
    return tenants.require(cfg.name), key, warnings
